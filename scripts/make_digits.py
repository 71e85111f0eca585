#!/usr/bin/env python3
"""Write scikit-learn's digits as a Darknet classification set (see darknet_sparse.examples).

Usage: scripts/make_digits.py [OUTDIR]    (default data/digits); prints the .data path.
"""
import argparse

from darknet_sparse.errors import DarknetSparseError
from darknet_sparse.examples import DEFAULT_OUTDIR, write_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", default=str(DEFAULT_OUTDIR),
                        help="output folder (default %(default)s)")
    outdir = parser.parse_args().outdir
    try:
        print(write_digits(outdir))
    except DarknetSparseError as exc:
        parser.exit(2, f"Error: {exc}\n")


if __name__ == "__main__":
    main()
