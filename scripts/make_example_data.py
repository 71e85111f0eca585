#!/usr/bin/env python3
"""Write an example model's data set as a Darknet classification set (see darknet_sparse.darknet.examples).

Usage: scripts/make_example_data.py [digits|fashion] [OUTDIR] [--split-seed N]   (default digits,
data/<name>); prints the .data path.  digits: scikit-learn's handwritten digits; --split-seed draws
another train/validation split (default: the shipped model's, examples.SPLIT_SEED).  fashion:
Fashion-MNIST from Debian's dataset-fashion-mnist (`make fashion` installs it).
"""
import argparse

from darknet_sparse.errors import DarknetSparseError
from darknet_sparse.darknet.examples import DEFAULT_OUTDIR, FASHION_OUTDIR, SPLIT_SEED, write_digits, write_fashion

WRITERS = {"digits": (write_digits, DEFAULT_OUTDIR), "fashion": (write_fashion, FASHION_OUTDIR)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="digits", choices=sorted(WRITERS), help="which data set")
    parser.add_argument("outdir", nargs="?", help="output folder (default data/<name>)")
    parser.add_argument("--split-seed", type=int, help=f"digits: the split's seed (default {SPLIT_SEED})")
    args = parser.parse_args()
    write, default = WRITERS[args.name]
    options = {}
    if args.split_seed is not None:
        if args.name != "digits":
            parser.exit(2, f"Error: --split-seed is for digits; {args.name} has its own fixed split\n")
        options["split_seed"] = args.split_seed
    try:
        print(write(args.outdir or default, **options))
    except DarknetSparseError as exc:
        parser.exit(2, f"Error: {exc}\n")


if __name__ == "__main__":
    main()
