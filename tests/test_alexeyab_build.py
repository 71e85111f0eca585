"""scripts/build_darknet_alexeyab.sh's source checks, the conftest hook that
reports AlexeyAB tests that could not run, and `darknet-sparse build --status`
listing both forks' builds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from helpers.ab_darknet import PATCHED, REPO, STOCK, require

SCRIPT = REPO / "scripts" / "build_darknet_alexeyab.sh"


def lone_script(tmp_path: Path) -> Path:
    """The script and its pin in a folder with no shared/upstream seed folder beside it."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "patches" / "alexeyab").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts")
    shutil.copy(SCRIPT.with_name("build_common.sh"), root / "scripts")
    for name in ("upstream.digest", "series"):
        shutil.copy(REPO / "patches" / "alexeyab" / name, root / "patches" / "alexeyab")
    return root / "scripts" / SCRIPT.name


def run_script(script: Path, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "DARKNET_AB_SRC"}
    environment.update({"DARKNET_SPARSE_BUILD_DIR": str(tmp_path / "b"), "PATH": "/usr/bin:/bin", **env})
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=environment, timeout=600)


def test_no_source_is_one_line_saying_how_to_give_one(tmp_path: Path):
    """No DARKNET_AB_SRC, an empty cache, no shared/upstream seed folder, and (here) no network."""
    script = lone_script(tmp_path)
    curl = tmp_path / "bin" / "curl"  # a download that fails, whatever the network
    curl.parent.mkdir()
    curl.write_text("#!/bin/sh\nexit 6\n")
    curl.chmod(0o755)
    done = run_script(script, tmp_path, "stock", PATH=f"{curl.parent}:/usr/bin:/bin")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no source of AlexeyAB's Darknet") \
        and "DARKNET_AB_SRC" in lines[0], done.stderr
    again = run_script(script, tmp_path, "--if-available", "stock", PATH=f"{curl.parent}:/usr/bin:/bin")
    assert again.returncode == 0
    assert (tmp_path / "b" / "darknet-alexeyab.unavailable").read_text().strip() == lines[0]


def test_a_source_with_another_digest_is_one_error_line(tmp_path: Path):
    script = lone_script(tmp_path)
    fake = tmp_path / "checkout"
    (fake / "src").mkdir(parents=True)
    (fake / "Makefile").write_text("all:\n")
    (fake / "src" / "parser.c").write_text("/* not the pinned commit */\n")
    for source in (fake, tmp_path / "fake.tar.gz"):
        if source.suffix == ".gz":
            with tarfile.open(source, "w:gz") as tar:
                tar.add(fake, arcname="darknet-x")
        done = run_script(script, tmp_path, "patched", DARKNET_AB_SRC=str(source))
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "content digest" in lines[0] \
            and "expected 13f65ee6" in lines[0], done.stderr
    assert not (tmp_path / "b" / "darknet-alexeyab").exists()


def test_the_hook_reports_tests_that_could_not_run(tmp_path: Path):
    """With no AlexeyAB build and the build's note, pytest leaves the AlexeyAB
    tests out, runs the rest, and says how many and why in one line."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "darknet-alexeyab.unavailable").write_text("Error: no source of AlexeyAB's Darknet (a test)\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_alexeyab_saves.py", "tests/test_schedule.py"],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, DARKNET_SPARSE_TEST_AB_BUILD=str(build)), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:]
    summary = [line for line in done.stdout.splitlines() if "AlexeyAB tests could not run" in line]
    assert len(summary) == 1
    assert summary[0].startswith("7 AlexeyAB tests could not run") and "(a test)" in summary[0]
    assert "7 deselected" in done.stdout and " passed" in done.stdout


def test_build_status_lists_both_forks():
    require(PATCHED), require(STOCK)
    done = subprocess.run([sys.executable, "-m", "darknet_sparse", "build", "--status", "--json"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    builds = json.loads(done.stdout)["builds"]
    mine = {(b["fork"], b["variant"], b["where"]): b for b in builds}
    for variant, tree in (("patched", PATCHED), ("stock", STOCK)):
        b = mine[("alexeyab", variant, "checkout")]
        assert b["built"] and b["tree"] == str(tree) and "AVX=1" in b["flags"]
    assert ("pjreddie", "patched", "checkout") in mine and ("alexeyab", "patched", "home") in mine
    text = subprocess.run([sys.executable, "-m", "darknet_sparse", "build", "--status"], capture_output=True,
                          text=True, cwd=REPO).stdout
    assert f"alexeyab patched checkout {PATCHED}: built (" in " ".join(text.split())
