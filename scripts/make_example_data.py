#!/usr/bin/env python3
"""Write an example model's data set as a Darknet classification set (see darknet_sparse.examples).

Usage: scripts/make_example_data.py [digits|fashion] [OUTDIR]   (default digits, data/<name>);
prints the .data path.  digits: scikit-learn's handwritten digits; fashion:
Fashion-MNIST from Debian's dataset-fashion-mnist (`make fashion` installs it).
"""
import argparse

from darknet_sparse.errors import DarknetSparseError
from darknet_sparse.examples import DEFAULT_OUTDIR, FASHION_OUTDIR, write_digits, write_fashion

WRITERS = {"digits": (write_digits, DEFAULT_OUTDIR), "fashion": (write_fashion, FASHION_OUTDIR)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="digits", choices=sorted(WRITERS), help="which data set")
    parser.add_argument("outdir", nargs="?", help="output folder (default data/<name>)")
    args = parser.parse_args()
    write, default = WRITERS[args.name]
    try:
        print(write(args.outdir or default))
    except DarknetSparseError as exc:
        parser.exit(2, f"Error: {exc}\n")


if __name__ == "__main__":
    main()
