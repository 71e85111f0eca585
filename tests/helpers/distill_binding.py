"""The tests' own binding module: the package's shim plus the test-only
``ds_distill_step`` (``helpers/distill_shim.c``), compiled against the same
patched build (``build/darknet``) with the same flags, so the package ships
no test-only code.  Built on first use into ``build/binding/_darknet_tests/``
and rebuilt only when its sources, flags or ``libdarknet.a`` change.

A :class:`darknet_sparse.darknet.network.Backend` of it runs every
``Network`` call as the package's does (``Network(cfg, using=backend())``).
"""
from __future__ import annotations

import fcntl
import hashlib
from functools import lru_cache
from pathlib import Path

import cffi

from darknet_sparse.darknet import _build
from darknet_sparse.darknet import network as darknet

HERE = Path(__file__).resolve().parent
MODULE = "_darknet_tests"
DECLARATION = ("int ds_distill_step(ds_net *net, const float *x, const float *y, int index, float *delta, "
               "int capacity, double *loss);\n")


def _ffi(tree: Path) -> cffi.FFI:
    """The package's FFI against ``tree``, with the test-only call added."""
    base = _build.make_ffibuilder(tree, MODULE)
    # cffi keeps what set_source was given; reuse it, so flags never drift.
    module, source, extension, options = base._assigned_source
    ffi = cffi.FFI()
    ffi.cdef("".join(base._cdefsources) + DECLARATION)
    options = {**options, "include_dirs": [*options["include_dirs"], str(HERE)]}
    ffi.set_source(module, source + '\n#include "distill_shim.c"\n', source_extension=extension, **options)
    return ffi


def _digest(tree: Path, ffi: cffi.FFI) -> str:
    _, source, _, options = ffi._assigned_source
    library = (tree / "libdarknet.a").read_bytes()
    parts = ["".join(ffi._cdefsources), source, repr(sorted(options.items())),
             *(p.read_text() for p in sorted(_build.HERE.glob("_*.c"))),  # the files _shim.c includes
             (HERE / "distill_shim.c").read_text(), hashlib.sha256(library).hexdigest()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@lru_cache(maxsize=None)
def module_path() -> Path:
    """The compiled module, built now if it is missing or stale."""
    tree = _build.default_tree()
    work = tree.resolve().parent / "binding" / MODULE
    work.mkdir(parents=True, exist_ok=True)
    ffi = _ffi(tree)
    digest = _digest(tree, ffi)
    stamp = work / "digest"
    with open(work / ".lock", "w") as lock:  # pytest-xdist workers take turns
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = sorted(work.glob(f"{MODULE}*.so"))
        if not built or not stamp.is_file() or stamp.read_text() != digest:
            built = [Path(ffi.compile(tmpdir=str(work)))]
            stamp.write_text(digest)
    return built[0]


def backend() -> darknet.Backend:
    return darknet.backend(module_path())
