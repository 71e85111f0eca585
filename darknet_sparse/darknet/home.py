"""Where the patched Darknet and the binding are, and building them there.

Every command that needs the binary or the binding asks here.  The binary
(:func:`find_darknet`) is, first found:

1. the path given (``--darknet``), else ``$DARKNET_SPARSE_DARKNET``;
2. a source checkout's ``build/darknet/darknet`` (``make darknet``);
3. the per-user folder's ``darknet/darknet`` (``darknet-sparse build``).

The binding (:func:`find_binding`) likewise: ``$DARKNET_SPARSE_BINDING`` (a
compiled module file), the checkout's ``darknet_sparse/darknet/_darknet*.so`` (``make
binding``), then the per-user folder's ``binding/_darknet*.so``.  There is one
binding per fork (:data:`MODULES`): ``find_binding("alexeyab")`` looks for
``_darknet_alexeyab*.so`` in the same places (``$DARKNET_SPARSE_BINDING_ALEXEYAB``
first), built against ``build/darknet-alexeyab`` (``make binding`` when that
build exists, or ``python -m darknet_sparse.darknet._build --fork alexeyab``).

The per-user folder (:func:`home`) is ``$DARKNET_SPARSE_HOME``, else
``$XDG_DATA_HOME/darknet-sparse``, else ``~/.local/share/darknet-sparse``.
:func:`build` fills it with the same script as ``make darknet``
(``scripts/build_darknet.sh``, shipped in the package as
``_upstream/scripts/build_darknet.sh`` with the patches beside it), then
compiles the binding there; the compiled module never goes into the package.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.machinery
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BindingError, BuildError, DarknetRunError

PACKAGE = Path(__file__).resolve().parents[1]
#: This folder: the binding's sources, and in a checkout the compiled module (``make binding``).
HERE = Path(__file__).resolve().parent
#: The command that builds what is missing, as error messages name it.
BUILD_COMMAND = "darknet-sparse build"
#: The binding's extension module name (``PyInit__darknet``).
MODULE = "_darknet"
#: Each fork's binding module, and the environment variable that overrides where it is.
MODULES = {"pjreddie": MODULE, "alexeyab": "_darknet_alexeyab"}
BINDING_VARIABLES = {"pjreddie": "DARKNET_SPARSE_BINDING", "alexeyab": "DARKNET_SPARSE_BINDING_ALEXEYAB"}
#: Each fork's patched tree (a folder of a build folder) and the file that says it is built.
TREES = {"pjreddie": ("darknet", "libdarknet.a"), "alexeyab": ("darknet-alexeyab", "libdarknet.so")}
#: Each fork's build script (in scripts/ of :func:`upstream`) and its stock tree (the tests' oracle).
SCRIPTS = {"pjreddie": "build_darknet.sh", "alexeyab": "build_darknet_alexeyab.sh"}
STOCK_TREES = {"pjreddie": "darknet-stock", "alexeyab": "darknet-alexeyab-stock"}


def _checkout() -> Path | None:
    """The repository root when the package runs from a source checkout."""
    root = PACKAGE.parent
    if (root / "setup.py").is_file() and (root / "patches" / "series").is_file():
        return root
    return None


CHECKOUT = _checkout()


def home() -> Path:
    """The per-user folder ``darknet-sparse build`` builds into."""
    if os.environ.get("DARKNET_SPARSE_HOME"):
        return Path(os.environ["DARKNET_SPARSE_HOME"]).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data).expanduser().resolve() / "darknet-sparse"


def upstream() -> Path:
    """The folder holding ``scripts/build_darknet.sh`` and ``patches/``: the
    checkout itself, or the copy setup.py put into the package."""
    for root in (CHECKOUT, PACKAGE / "_upstream"):
        if root is not None and (root / "scripts" / "build_darknet.sh").is_file():
            return root
    raise BuildError(f"{PACKAGE / '_upstream'} is missing: this installation of darknet-sparse has no build "
                     "script and patches (reinstall it with pip)")


def _trees() -> list[tuple[str, Path]]:
    """The built Darknet trees to look in, with where each comes from."""
    trees = [("checkout", CHECKOUT / "build")] if CHECKOUT is not None else []
    return trees + [("home", home())]


def _darknet_candidates(fork: str = "pjreddie") -> list[tuple[str, Path]]:
    return [(source, folder / TREES[fork][0] / "darknet") for source, folder in _trees()]


def find_darknet(path: str | Path | None = None, fork: str = "pjreddie") -> Path:
    """The patched ``darknet`` binary of ``fork``: ``path`` if given, else the
    first found (AlexeyAB's: ``build/darknet-alexeyab/darknet``, then the
    per-user folder's ``darknet-alexeyab/darknet``)."""
    if path is None and fork == "pjreddie" and os.environ.get("DARKNET_SPARSE_DARKNET"):
        path, given = os.environ["DARKNET_SPARSE_DARKNET"], "DARKNET_SPARSE_DARKNET"
    else:
        given = "--darknet"
    if path is not None:
        path = Path(path)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise DarknetRunError(f"{path}: no Darknet binary there ({given})")
        return path
    for _, candidate in _darknet_candidates(fork):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    if fork == "alexeyab":
        raise DarknetRunError(f"the patched AlexeyAB Darknet is not built: run `{BUILD_COMMAND} --fork alexeyab` "
                              "(or make darknet-alexeyab, or pass --darknet)")
    raise DarknetRunError(f"the patched Darknet is not built: run `{BUILD_COMMAND}` (or pass --darknet)")


def _module_file(folder: Path, module: str = MODULE) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (folder / (module + suffix)).is_file():
            return folder / (module + suffix)
    return None


def _binding_candidates() -> list[tuple[str, Path]]:
    folders = [("checkout", HERE)] if CHECKOUT is not None else []
    return folders + [("home", home() / "binding")]


def find_binding(fork: str = "pjreddie") -> Path:
    """The compiled binding module file of ``fork`` (see the module docstring for the order)."""
    if fork not in MODULES:
        raise BindingError(f"unknown fork {fork!r}: expected {', '.join(MODULES)}")
    variable = BINDING_VARIABLES[fork]
    if os.environ.get(variable):
        path = Path(os.environ[variable])
        if not path.is_file():
            raise BindingError(f"{path}: no compiled binding there ({variable})")
        return path
    for _, folder in _binding_candidates():
        found = _module_file(folder, MODULES[fork])
        if found is not None:
            return found
    if fork == "alexeyab":
        raise BindingError(f"the binding to AlexeyAB's Darknet is not built: run `{BUILD_COMMAND} --fork alexeyab` "
                           "(in a checkout: make darknet-alexeyab binding)")
    raise BindingError(f"the Darknet binding is not built: run `{BUILD_COMMAND}`")


def status() -> dict[str, Any]:
    """Where each part is: the binary, the binding, the per-user folder, the
    build script and patches.  ``binary``/``binding_path`` are what commands
    use; where nothing is built, ``binary`` is where a build would put it."""
    try:
        binary, binary_found = str(find_darknet()), True
    except DarknetRunError:
        binary, binary_found = str(home() / "darknet" / "darknet"), False
    try:
        binding: str | None = str(find_binding())
    except BindingError:
        binding = None
    try:
        script: str | None = str(upstream())
    except BuildError:
        script = None
    return {"home": str(home()), "binary": binary, "exists": binary_found, "binding_path": binding,
            "upstream": script, "log": str(home() / "build.log"), "builds": builds()}


def builds() -> list[dict[str, Any]]:
    """Every Darknet build of either fork there is or could be: the patched
    tree of each fork in the checkout's build/ and in the per-user folder, and
    the checkout's stock trees; for each, whether it is built and its flags."""
    found = []
    for fork, (tree_name, marker) in TREES.items():
        places = [(where, folder, tree_name, "patched") for where, folder in _trees()]
        if CHECKOUT is not None:
            places.append(("checkout", CHECKOUT / "build", STOCK_TREES[fork], "stock"))
        for where, folder, name, variant in places:
            tree = folder / name
            built = (tree / "darknet").is_file() and (tree / marker).is_file()
            flags = tree / ("build-flags" if fork == "alexeyab" else ".build-flags")
            found.append({"fork": fork, "variant": variant, "where": where, "tree": str(tree), "built": built,
                          "flags": flags.read_text().strip() if built and flags.is_file() else None})
    return found


def _run_logged(command: list[str], env: dict[str, str], log: Any, progress: Callable[[str], None]) -> int:
    """Run ``command`` with its output appended to ``log``; lines starting
    with ``==> `` (the stages) also go to ``progress``."""
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as child:
        for line in child.stdout:
            log.write(line)
            if line.startswith("==> "):
                progress(line[4:].rstrip("\n"))
    log.flush()
    return child.returncode


def _failure(what: str, log_path: Path) -> BuildError:
    lines = log_path.read_text(errors="replace").splitlines()
    named = [line for line in lines if "error:" in line.lower()]
    last = named[-1] if named else (lines[-1] if lines else "no output")
    return BuildError(f"{what} failed: {last.strip()} (full log: {log_path})")


def _binding_key(tree: Path) -> str:
    """What the compiled binding depends on: the Darknet it links, the shim
    sources, the build code, and this Python's extension ABI."""
    digest = hashlib.sha256(importlib.machinery.EXTENSION_SUFFIXES[0].encode())
    inputs = [tree / "libdarknet.a", tree / "include" / "darknet.h", tree / "binding-cflags", tree / "link-flags",
              HERE / "_build.py", HERE / "_cdef.h", HERE / "_shim.c", *sorted(HERE.glob("_shim_*.c")),
              *sorted(HERE.glob("_fork_*.c"))]
    for path in inputs:
        digest.update(path.name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-") + b"\0")
    return digest.hexdigest()


def build(progress: Callable[[str], None], jobs: int | None = None, fork: str = "pjreddie") -> dict[str, Any]:
    """Fetch, patch and compile ``fork``'s Darknet into :func:`home`, then the
    binding; each stage reports one line to ``progress``, and only what changed
    is redone.  Returns :func:`status`.  Flags (GPU, OPENMP, AVX...) and
    DARKNET_SRC / DARKNET_AB_SRC come from the environment, as for ``make
    darknet`` / ``make darknet-alexeyab``."""
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    script = upstream() / "scripts" / SCRIPTS[fork]
    log_path = root / "build.log"
    env = dict(os.environ, DARKNET_SPARSE_BUILD_DIR=str(root))
    if jobs is not None:
        env["JOBS"] = str(jobs)
    with open(root / ".build.lock", "w") as lock, open(log_path, "w") as log:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds into one folder take turns
        if _run_logged(["bash", str(script), "patched"], env, log, progress) != 0:
            raise _failure("building Darknet" if fork == "pjreddie" else "building AlexeyAB's Darknet", log_path)
        build_binding(root, fork, env, log, log_path, progress)
    return status()


def build_binding(root: Path, fork: str, env: dict[str, str], log: Any, log_path: Path,
                  progress: Callable[[str], None]) -> None:
    """Compile ``fork``'s binding against its tree in ``root`` into
    ``root/binding``, unless what it depends on is unchanged."""
    module = MODULES[fork]
    tree, out = root / TREES[fork][0], root / "binding"
    key = _binding_key(tree)
    stamp = out / (".key" if fork == "pjreddie" else f".key-{fork}")
    if _module_file(out, module) is not None and stamp.is_file() and stamp.read_text() == key:
        progress(f"binding: {_module_file(out, module)} is up to date")
        return
    progress(f"binding: compiling {module} against {tree}")
    command = [sys.executable, "-m", "darknet_sparse.darknet._build", "--fork", fork, "--darknet", str(tree),
               "--out", str(out), "--work", str(out / "work" / fork)]
    if _run_logged(command, env, log, progress) != 0:
        raise _failure(f"compiling the binding ({fork})", log_path)
    stamp.write_text(key)
