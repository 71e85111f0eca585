"""Build the cffi binding to a built Darknet (cffi's out-of-line API mode).

::

    python -m darknet_sparse.darknet._build        # build/darknet -> darknet_sparse/darknet/_darknet*.so
    python -m darknet_sparse.darknet._build --fork alexeyab  # build/darknet-alexeyab -> _darknet_alexeyab*.so
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

AlexeyAB's fork (``--fork alexeyab``, module ``_darknet_alexeyab``) gets the
same cdef and shim, compiled with ``-DDS_FORK_ALEXEYAB`` so that ``_shim.c``
includes ``_fork_alexeyab.c`` (the fork's own calls) instead of
``_fork_pjreddie.c``; it links the fork's objects (``obj/*.o`` but the
command's ``darknet.o``, made into an archive in the work folder) with the
defines and libraries its ``build-flags`` imply.  Its patched ``darknet.h``
says ``DS_PRUNE_THRESHOLD``.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

import cffi

from . import home
from ..errors import BindingError

HERE = Path(__file__).resolve().parent
#: The line of the cdef after which the calls need a patched Darknet.
SPARSE_MARKER = "/* sparse:"
#: What a patched darknet.h defines, per fork.
PATCHED_DEFINES = {"pjreddie": "#define DARKNET_SPARSE", "alexeyab": "#define DS_PRUNE_THRESHOLD"}


def _read_flags(darknet: Path, name: str) -> list[str]:
    path = darknet / name
    if not path.is_file():
        raise BindingError(f"{path} is missing: build Darknet first ({home.BUILD_COMMAND}, or make darknet)")
    return shlex.split(path.read_text())


def default_tree(fork: str = "pjreddie") -> Path:
    """The patched Darknet tree of ``fork`` the binding is built against by default."""
    name, built = home.TREES[fork]
    trees = [folder / name for _, folder in home._trees()]
    return next((tree for tree in trees if (tree / built).is_file()), trees[0])


def _alexeyab_flags(darknet: Path) -> tuple[list[str], list[str]]:
    """Compile and link flags for a binding to AlexeyAB's build in
    ``darknet``, from the flags it was built with (build-flags)."""
    path = darknet / "build-flags"
    if not path.is_file():
        raise BindingError(f"{path} is missing: build AlexeyAB's Darknet first (make darknet-alexeyab)")
    flags = dict(item.split("=", 1) for item in shlex.split(path.read_text()) if "=" in item)
    on = {name for name, value in flags.items() if value == "1"}
    cflags = ["-DDS_FORK_ALEXEYAB"] + [f"-D{name}" for name in ("GPU", "CUDNN", "OPENCV") if name in on]
    libs = ["-lm", "-pthread", "-lstdc++"]
    if "OPENMP" in on:
        libs.append("-fopenmp")
    if "GPU" in on:
        cflags.append("-I/usr/local/cuda/include")
        libs = ["-L/usr/local/cuda/lib64", "-lcuda", "-lcudart", "-lcublas", "-lcurand"] + libs
    if "CUDNN" in on:
        libs.append("-lcudnn")
    if "OPENCV" in on:
        libs += shlex.split(subprocess.run(["pkg-config", "--libs", "opencv4"], capture_output=True,
                                           text=True, check=False).stdout)
    return cflags, libs


def _alexeyab_archive(darknet: Path, work: Path) -> Path:
    """The fork's objects but the command's main (darknet.o), as an archive."""
    objects = sorted(o for o in (darknet / "obj").glob("*.o") if o.name != "darknet.o")
    if not objects:
        raise BindingError(f"{darknet / 'obj'} has no objects: build AlexeyAB's Darknet first (make darknet-alexeyab)")
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "libdarknet-alexeyab.a"
    tmp = archive.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    subprocess.run(["ar", "rcs", str(tmp), *map(str, objects)], check=True)
    tmp.replace(archive)
    return archive


def make_ffibuilder(darknet: Path, module: str, fork: str = "pjreddie", work: Path | None = None) -> cffi.FFI:
    """The FFI of ``module`` against ``fork``'s Darknet tree built in ``darknet``."""
    darknet = darknet.resolve()  # cffi compiles from inside its tmpdir
    header = darknet / "include" / "darknet.h"
    if fork == "alexeyab":
        for path in (header, darknet / "libdarknet.so"):
            if not path.is_file():
                raise BindingError(f"{path} is missing: build AlexeyAB's Darknet first (make darknet-alexeyab)")
        cflags, libs = _alexeyab_flags(darknet)
        library = _alexeyab_archive(darknet, (work or darknet.parent / "binding" / module).resolve())
    else:
        library = darknet / "libdarknet.a"
        for path in (header, library):
            if not path.is_file():
                raise BindingError(f"{path} is missing: build Darknet first ({home.BUILD_COMMAND}, or make darknet)")
        cflags, libs = _read_flags(darknet, "binding-cflags"), _read_flags(darknet, "link-flags")
    cdef = (HERE / "_cdef.h").read_text()
    if PATCHED_DEFINES[fork] not in header.read_text():
        cdef = cdef[:cdef.index(SPARSE_MARKER)]
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        module,
        (HERE / "_shim.c").read_text(),
        include_dirs=[str(header.parent), str(HERE)],
        extra_compile_args=cflags + ["-fvisibility=hidden"],
        extra_objects=[str(library)],
        # Export nothing but PyInit (hidden shim, --exclude-libs for Darknet):
        # a stock and a patched binding, or two forks', then share a process without mixing.
        extra_link_args=libs + ["-Wl,--exclude-libs,ALL"],
    )
    return ffi


def __getattr__(name: str) -> cffi.FFI:
    """The module-level ``ffibuilder``, made on first use (PEP 562)."""
    if name == "ffibuilder":
        globals()["ffibuilder"] = builder = make_ffibuilder(default_tree(), home.MODULE)
        return builder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(darknet: Path | None = None, module: str | None = None, out: Path = HERE, work: Path | None = None,
          fork: str = "pjreddie") -> Path:
    """Compile the module (default ``home.MODULES[fork]``) against
    ``darknet`` (default :func:`default_tree` of ``fork``), intermediate files
    in ``work`` (default ``build/binding/MODULE`` beside the tree), and copy
    it into ``out``; returns its path."""
    if fork not in home.MODULES:
        raise BindingError(f"unknown fork {fork!r}: expected {', '.join(home.MODULES)}")
    module = module or home.MODULES[fork]
    darknet = Path(darknet) if darknet is not None else default_tree(fork)
    work = Path(work) if work is not None else darknet.resolve().parent / "binding" / module
    work.mkdir(parents=True, exist_ok=True)
    built = Path(make_ffibuilder(darknet, module, fork, work).compile(tmpdir=str(work)))
    out.mkdir(parents=True, exist_ok=True)
    target = out / built.name
    shutil.copyfile(built, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)  # a running import never sees half a file
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m darknet_sparse.darknet._build", description=__doc__.split("\n")[0])
    parser.add_argument("--fork", choices=tuple(home.MODULES), default="pjreddie",
                        help="whose Darknet the tree is (default pjreddie; alexeyab: build/darknet-alexeyab)")
    parser.add_argument("--darknet", type=Path,
                        help="built Darknet tree (default: the checkout's build/darknet, or build/darknet-alexeyab)")
    parser.add_argument("--module", help="extension module name (default _darknet, or _darknet_alexeyab)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to put the module in")
    parser.add_argument("--work", type=Path, help="folder for the generated C and objects")
    args = parser.parse_args(argv)
    try:
        print(build(args.darknet, args.module, args.out, args.work, args.fork))
    except BindingError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
