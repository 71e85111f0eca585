"""The package as a user gets it: an sdist of this repository, installed (not
editable) into a fresh venv and run from another folder.

The venv borrows the test environment's site-packages (numpy, click, cffi,
Pillow, setuptools, wheel) through a ``.pth`` file, so installing needs no
network; ``--ignore-installed`` keeps pip from touching the editable install
it can see there.  The installed ``darknet-sparse build`` then builds Darknet
and the binding from scratch into an empty per-user folder, from the Debian
tarball the checkout's own build fetched (no second download), and a command
runs through that binding.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "cfg" / "digits.cfg"
WEIGHTS = REPO / "cfg" / "digits.weights"
OVERRIDES = ("DARKNET_SPARSE_HOME", "DARKNET_SPARSE_DARKNET", "DARKNET_SPARSE_BINDING", "DARKNET_SRC")


@dataclass
class Installed:
    venv: Path
    work: Path  # a folder that is not the repository, to run from

    def run(self, *args: str | Path, home: Path, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if k not in OVERRIDES and k != "PYTHONPATH"}
        clean.update(env or {}, DARKNET_SPARSE_HOME=str(home))
        done = subprocess.run([str(self.venv / "bin" / "darknet-sparse"), *map(str, args)], cwd=self.work,
                              env=clean, capture_output=True, text=True)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def python(self, code: str) -> str:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], cwd=self.work, check=True,
                              capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(root / "dist")], cwd=REPO, check=True,
                   capture_output=True)
    (sdist,) = (root / "dist").glob("darknet-sparse-*.tar.gz")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", where], check=True, capture_output=True,
                                  text=True).stdout.strip())
    (purelib / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-build-isolation", "--no-index", "--ignore-installed", str(sdist)],
                   check=True, capture_output=True, cwd=root)
    (root / "work").mkdir()
    return Installed(venv, root / "work")


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    where = Path(installed.python("import darknet_sparse; print(darknet_sparse.__file__)").strip()).parent
    assert where.is_relative_to(installed.venv)
    series = [line.split()[0] for line in (REPO / "patches" / "series").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    shipped = where / "_upstream"
    assert sorted(p.name for p in (shipped / "patches").glob("*.patch")) == sorted(series)
    for name in ["series", "upstream.sha256", *series]:
        assert (shipped / "patches" / name).read_bytes() == (REPO / "patches" / name).read_bytes()
    script = Path("scripts") / "build_darknet.sh"
    assert (shipped / script).read_bytes() == (REPO / script).read_bytes()
    assert (where / "darknet" / "_shim.c").is_file() and (where / "darknet" / "_cdef.h").is_file()
    assert not list(where.rglob("_darknet*.so")), "a compiled binding must never be in the package"


def test_info_and_threshold_run_from_another_folder(installed: Installed, tmp_path: Path) -> None:
    home = tmp_path / "home"
    info = installed.run("info", WEIGHTS, home=home)
    assert "connected" in info.stdout
    installed.run("threshold", WEIGHTS, "-s", "0.5", "-o", "sparse.weights", home=home)
    out = installed.work / "sparse.weights"
    assert out.stat().st_size == WEIGHTS.stat().st_size
    assert "sparse.weights" in installed.run("info", out, "--cfg", CFG, home=home).stdout


def test_without_a_build_commands_name_the_build_command(installed: Installed, tmp_path: Path) -> None:
    home = tmp_path / "empty"
    status = installed.run("build", "--status", home=home).stdout
    assert f"patched darknet: {home}/darknet/darknet (not built: run `darknet-sparse build`)" in status
    assert f"per-user folder: {home}" in status
    done = installed.run("sensitivity", "-w", WEIGHTS, "--images", installed.work, home=home, check=False)
    assert (done.returncode, done.stderr) == (2, "Error: the Darknet binding is not built: run "
                                                 "`darknet-sparse build`\n")


def _source(home: Path) -> dict[str, str]:
    """Upstream for a build into ``home`` without the network: the Debian
    tarball the checkout's build fetched (sha256-checked again), else the
    stock tree as DARKNET_SRC."""
    tarballs = sorted((REPO / "build" / "apt").glob("*.orig.tar.xz"))
    if not tarballs:
        return {"DARKNET_SRC": str(REPO / "build" / "darknet-stock")}
    (home / "apt").mkdir(parents=True)
    shutil.copy2(tarballs[0], home / "apt")
    return {}


def test_build_then_recalibrate_through_the_binding_it_made(installed: Installed, tmp_path: Path) -> None:
    """A full build from the installed package into an empty per-user folder;
    a second run redoes nothing; a command then uses what it built."""
    home = tmp_path / "home"
    source = _source(home)
    built = installed.run("build", home=home, env=source)
    stages = [line.split(":")[0] for line in built.stderr.splitlines()]
    assert stages == ["fetch", "unpack+patch", "compile", "binding"], built.stderr
    assert ("cached, sha256 checked" if not source else "copying DARKNET_SRC") in built.stderr
    assert "patches applied" in built.stderr and "binding: compiling" in built.stderr
    (binding,) = (home / "binding").glob("_darknet*.so")
    binary = home / "darknet" / "darknet"
    assert f"python binding: {binding}" in built.stdout
    assert f"patched darknet: {binary} (built)" in built.stdout
    assert "new options: prune=, prune_threshold=" in built.stdout

    stamps = binary.stat().st_mtime_ns, binding.stat().st_mtime_ns
    again = installed.run("build", home=home, env=source)
    assert f"binding: {binding} is up to date" in again.stderr
    assert "Nothing to be done" in (home / "build.log").read_text()
    assert (binary.stat().st_mtime_ns, binding.stat().st_mtime_ns) == stamps

    images = installed.work / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{i}.png")
    done = installed.run("recalibrate", "-w", WEIGHTS, "--images", images, "--batch", "4", "-o", "recal.weights",
                         "--json", home=home)
    assert (installed.work / "recal.weights").stat().st_size == WEIGHTS.stat().st_size
    assert (installed.work / "recal.weights").read_bytes() != WEIGHTS.read_bytes()
    assert done.stdout.strip().startswith(("{", "["))


def test_the_per_user_folder_and_the_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from darknet_sparse.darknet import home
    from darknet_sparse.errors import DarknetRunError

    for name in OVERRIDES + ("XDG_DATA_HOME",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home.home() == tmp_path / ".local" / "share" / "darknet-sparse"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert home.home() == tmp_path / "data" / "darknet-sparse"
    monkeypatch.setenv("DARKNET_SPARSE_HOME", str(tmp_path / "mine"))
    assert home.home() == tmp_path / "mine"

    assert home.find_darknet() == REPO / "build" / "darknet" / "darknet"  # the checkout's build comes first
    monkeypatch.setattr(home, "CHECKOUT", None)
    with pytest.raises(DarknetRunError, match=r"^the patched Darknet is not built: run `darknet-sparse build`"):
        home.find_darknet()
    binary = tmp_path / "mine" / "darknet" / "darknet"
    binary.parent.mkdir(parents=True)
    shutil.copy2(REPO / "build" / "darknet" / "darknet", binary)
    assert home.find_darknet() == binary
    stock = REPO / "build" / "darknet-stock" / "darknet"
    assert home.find_darknet(stock) == stock  # --darknet
    monkeypatch.setenv("DARKNET_SPARSE_DARKNET", str(tmp_path / "nothing"))
    with pytest.raises(DarknetRunError, match=r"nothing: no Darknet binary there \(DARKNET_SPARSE_DARKNET\)"):
        home.find_darknet()


def test_a_failing_stage_is_one_error_line_naming_the_log(tmp_path: Path) -> None:
    (tmp_path / "not-darknet").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    env.update(DARKNET_SPARSE_HOME=str(tmp_path / "home"), DARKNET_SRC=str(tmp_path / "not-darknet"))
    done = subprocess.run([str(Path(sys.executable).parent / "darknet-sparse"), "build"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    log = tmp_path / "home" / "build.log"
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"Error: building Darknet failed: build_darknet.sh: error: "
                           f"DARKNET_SRC={tmp_path}/not-darknet is not a Darknet checkout "
                           f"(no Makefile and src/parser.c) (full log: {log})\n")
