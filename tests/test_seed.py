"""Reproducible training (patches/0005-seed.patch): with ``[net] seed=N`` the
same command on the same files saves the same bytes, data-loading threads
and all; another seed saves other bytes (so the comparison can fail)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darknet_sparse.darknet import network as darknet
from helpers.darknet_run import CLASSIFIER, PATCHED, ROOT, sparse_start, stock_backend, write_cfg, write_images

#: Augmentation on, so the loading threads draw many random numbers.
AUGMENTED = "angle=15\naspect=1.2\nexposure=1.5\nsaturation=1.5\nhue=.1\nmax_batches=8"


def _run(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(PATCHED), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def classifier_train(folder: Path, net: str) -> bytes:
    """``classifier train`` (32 loading threads) from the same start; the saved bytes."""
    folder.mkdir()
    data = write_images(folder, per_label=8)
    cfg = write_cfg(folder / "net.cfg", CLASSIFIER, net=f"{AUGMENTED}\n{net}")
    start = sparse_start(write_cfg(folder / "start.cfg", CLASSIFIER), folder / "start.weights", fraction=0)
    _run("classifier", "train", data, cfg, start, cwd=folder)
    return (folder / "backup" / "net.weights").read_bytes()


def detector_set(folder: Path, count: int = 8) -> Path:
    """Labelled 64x64 photos for ``detector train`` and its data file."""
    rng = np.random.default_rng(3)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    paths = []
    for k in range(count):
        path = folder / "images" / f"{k}.jpg"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        x, y = rng.uniform(0.3, 0.7, 2)
        (folder / "labels" / f"{k}.txt").write_text(f"{k % 2} {x:.3f} {y:.3f} 0.3 0.4\n")
        paths.append(str(path))
    (folder / "train.list").write_text("\n".join(paths) + "\n")
    (folder / "backup").mkdir()
    data = folder / "det.data"
    data.write_text(f"classes=2\ntrain={folder / 'train.list'}\nbackup={folder / 'backup'}\n")
    return data


def detector_train(folder: Path, net: str) -> bytes:
    """``detector train`` (64 loading threads, jitter, and random=1: the
    main thread draws the new size while the next batch loads)."""
    data = detector_set(folder)
    text = (ROOT / "tests" / "cfgs" / "tiny_detector.cfg").read_text()
    text = text.replace("max_batches=1000", "max_batches=2").replace("burn_in=100", "burn_in=0")
    (folder / "plain.cfg").write_text(text)
    start = sparse_start(folder / "plain.cfg", folder / "start.weights", fraction=0)  # the same in every run
    cfg = folder / "tiny.cfg"
    cfg.write_text(text.replace("[net]\n", f"[net]\n{net}\n", 1))
    _run("detector", "train", data, cfg, start, cwd=folder)
    return (folder / "backup" / "tiny_final.weights").read_bytes()


@pytest.mark.parametrize("train", [classifier_train, detector_train], ids=["classifier", "detector"])
def test_the_same_seed_saves_the_same_bytes(tmp_path: Path, train) -> None:
    first = train(tmp_path / "a", "seed=7")
    assert train(tmp_path / "b", "seed=7") == first
    assert train(tmp_path / "c", "seed=8") != first


def test_a_bad_seed_is_one_error_line(tmp_path: Path) -> None:
    data = write_images(tmp_path, per_label=1)
    for value in ("-1", "4294967296", "7x", "1.5"):
        cfg = write_cfg(tmp_path / "net.cfg", CLASSIFIER, net=f"seed={value}")
        done = subprocess.run([str(PATCHED), "classifier", "train", str(data), str(cfg)], cwd=tmp_path,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert errors == [f"Error: [net] seed={value}: expected a whole number from 0 to 4294967295"]


def _initial_bytes(cfg: Path, out: Path, seed: int, using: darknet.Backend | None = None) -> bytes:
    darknet.seed(seed, using)
    darknet.Network(cfg, using=using).save(out)
    return out.read_bytes()


def test_the_binding_seed_is_the_cfg_seed(tmp_path: Path) -> None:
    """darknet.seed(N) then a cfg draws the initial weights [net] seed=N
    draws, in the patched binding and in a stock one (srand either way)."""
    plain = write_cfg(tmp_path / "plain.cfg", CLASSIFIER)
    seeded = write_cfg(tmp_path / "seeded.cfg", CLASSIFIER, net="seed=5")
    first = _initial_bytes(plain, tmp_path / "a.weights", 5)
    assert _initial_bytes(seeded, tmp_path / "b.weights", 99) == first  # the cfg's seed wins over the 99
    assert _initial_bytes(plain, tmp_path / "c.weights", 5, stock_backend()) == first
    assert _initial_bytes(plain, tmp_path / "d.weights", 6) != first
