"""Build the cffi binding to a built Darknet (cffi's out-of-line API mode).

::

    python -m darknet_sparse._darknet_build        # build/darknet -> darknet_sparse/_darknet*.so
    python -m darknet_sparse._darknet_build --darknet build/darknet-stock \\
        --module _darknet_stock --out build/binding-stock

The module is the C shim ``_darknet_shim.c`` with the declarations of
``_darknet_cdef.h``, linked statically with ``DARKNET/libdarknet.a`` using the
defines and libraries ``scripts/build_darknet.sh`` recorded for that build
(``binding-cflags``, ``link-flags``), since the defines change the layout of
Darknet's structs.  A stock Darknet gets the core calls only: the prune part
of the cdef needs the patched ``darknet.h`` (``DARKNET_SPARSE``).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
from pathlib import Path

import cffi

from .errors import BindingError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The line of the cdef after which the calls need a patched Darknet.
SPARSE_MARKER = "/* sparse:"


def _read_flags(darknet: Path, name: str) -> list[str]:
    path = darknet / name
    if not path.is_file():
        raise BindingError(f"{path} is missing: build Darknet first (make darknet, or scripts/build_darknet.sh)")
    return shlex.split(path.read_text())


def ffibuilder(darknet: Path, module: str) -> cffi.FFI:
    """The FFI of ``module`` against the Darknet tree built in ``darknet``."""
    darknet = darknet.resolve()  # cffi compiles from inside its tmpdir
    header = darknet / "include" / "darknet.h"
    library = darknet / "libdarknet.a"
    for path in (header, library):
        if not path.is_file():
            raise BindingError(f"{path} is missing: build Darknet first (make darknet, or scripts/build_darknet.sh)")
    cdef = (HERE / "_darknet_cdef.h").read_text()
    if "#define DARKNET_SPARSE" not in header.read_text():
        cdef = cdef[:cdef.index(SPARSE_MARKER)]
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        module,
        (HERE / "_darknet_shim.c").read_text(),
        include_dirs=[str(header.parent), str(HERE)],
        extra_compile_args=_read_flags(darknet, "binding-cflags") + ["-fvisibility=hidden"],
        extra_objects=[str(library)],
        # Export nothing but PyInit (hidden shim, --exclude-libs for Darknet):
        # a stock and a patched binding then share a process without mixing.
        extra_link_args=_read_flags(darknet, "link-flags") + ["-Wl,--exclude-libs,ALL"],
    )
    return ffi


def build(darknet: Path = ROOT / "build" / "darknet", module: str = "_darknet", out: Path = HERE) -> Path:
    """Compile the module (intermediate files under ``build/binding/``) and
    copy it into ``out``; returns its path."""
    work = ROOT / "build" / "binding" / module
    work.mkdir(parents=True, exist_ok=True)
    built = Path(ffibuilder(Path(darknet), module).compile(tmpdir=str(work)))
    out.mkdir(parents=True, exist_ok=True)
    target = out / built.name
    shutil.copyfile(built, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)  # a running import never sees half a file
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m darknet_sparse._darknet_build", description=__doc__.split("\n")[0])
    parser.add_argument("--darknet", type=Path, default=ROOT / "build" / "darknet", help="built Darknet tree")
    parser.add_argument("--module", default="_darknet", help="extension module name")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to put the module in")
    args = parser.parse_args(argv)
    try:
        print(build(args.darknet, args.module, args.out))
    except BindingError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
