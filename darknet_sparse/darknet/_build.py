"""Build the cffi binding to a built Darknet (cffi's out-of-line API mode).

::

    python -m darknet_sparse.darknet._build        # build/darknet -> darknet_sparse/darknet/_darknet*.so
    python -m darknet_sparse.darknet._build --darknet build/darknet-stock \\
        --module _darknet_stock --out build/binding-stock

The first is ``make binding`` in a checkout; ``darknet-sparse build`` runs it
with the per-user folder's tree and output (see :mod:`darknet_sparse.darknet.home`),
so an installed package's folder never receives a compiled module.

As cffi's convention has it, the module-level ``ffibuilder`` is the FFI of
``_darknet`` against the default tree (the checkout's ``build/darknet``, else
the per-user folder's): ``from darknet_sparse.darknet._build import
ffibuilder; ffibuilder.compile()``.  It is made when first asked for, so
importing this module needs no built Darknet.

The module is the C shim ``_shim.c`` with the declarations of
``_cdef.h``, linked statically with ``DARKNET/libdarknet.a`` using the
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

from . import home
from ..errors import BindingError

HERE = Path(__file__).resolve().parent
#: The line of the cdef after which the calls need a patched Darknet.
SPARSE_MARKER = "/* sparse:"


def _read_flags(darknet: Path, name: str) -> list[str]:
    path = darknet / name
    if not path.is_file():
        raise BindingError(f"{path} is missing: build Darknet first ({home.BUILD_COMMAND}, or make darknet)")
    return shlex.split(path.read_text())


def default_tree() -> Path:
    """The patched Darknet tree the binding is built against by default."""
    trees = [folder / "darknet" for _, folder in home._trees()]
    return next((tree for tree in trees if (tree / "libdarknet.a").is_file()), trees[0])


def make_ffibuilder(darknet: Path, module: str) -> cffi.FFI:
    """The FFI of ``module`` against the Darknet tree built in ``darknet``."""
    darknet = darknet.resolve()  # cffi compiles from inside its tmpdir
    header = darknet / "include" / "darknet.h"
    library = darknet / "libdarknet.a"
    for path in (header, library):
        if not path.is_file():
            raise BindingError(f"{path} is missing: build Darknet first ({home.BUILD_COMMAND}, or make darknet)")
    cdef = (HERE / "_cdef.h").read_text()
    if "#define DARKNET_SPARSE" not in header.read_text():
        cdef = cdef[:cdef.index(SPARSE_MARKER)]
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        module,
        (HERE / "_shim.c").read_text(),
        include_dirs=[str(header.parent), str(HERE)],
        extra_compile_args=_read_flags(darknet, "binding-cflags") + ["-fvisibility=hidden"],
        extra_objects=[str(library)],
        # Export nothing but PyInit (hidden shim, --exclude-libs for Darknet):
        # a stock and a patched binding then share a process without mixing.
        extra_link_args=_read_flags(darknet, "link-flags") + ["-Wl,--exclude-libs,ALL"],
    )
    return ffi


def __getattr__(name: str) -> cffi.FFI:
    """The module-level ``ffibuilder``, made on first use (PEP 562)."""
    if name == "ffibuilder":
        globals()["ffibuilder"] = builder = make_ffibuilder(default_tree(), home.MODULE)
        return builder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(darknet: Path | None = None, module: str = home.MODULE, out: Path = HERE, work: Path | None = None) -> Path:
    """Compile the module against ``darknet`` (default :func:`default_tree`),
    intermediate files in ``work`` (default ``build/binding/MODULE`` beside the
    tree), and copy it into ``out``; returns its path."""
    darknet = Path(darknet) if darknet is not None else default_tree()
    work = Path(work) if work is not None else darknet.resolve().parent / "binding" / module
    work.mkdir(parents=True, exist_ok=True)
    built = Path(make_ffibuilder(darknet, module).compile(tmpdir=str(work)))
    out.mkdir(parents=True, exist_ok=True)
    target = out / built.name
    shutil.copyfile(built, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)  # a running import never sees half a file
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m darknet_sparse.darknet._build", description=__doc__.split("\n")[0])
    parser.add_argument("--darknet", type=Path, help="built Darknet tree (default: the checkout's build/darknet)")
    parser.add_argument("--module", default=home.MODULE, help="extension module name")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to put the module in")
    parser.add_argument("--work", type=Path, help="folder for the generated C and objects")
    args = parser.parse_args(argv)
    try:
        print(build(args.darknet, args.module, args.out, args.work))
    except BindingError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
