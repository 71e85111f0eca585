"""Real images for the COCO detector (make images): photos and video frames.

Sources (Debian packages, never committed):

- every ``*.jpg`` of Debian ``darknet``'s ``/usr/share/darknet/data/``;
- the photos with objects in them among Debian ``opencv-doc``'s
  ``examples/data/`` (``PHOTOS`` below, chosen by eye: no textures, charts,
  drawings, logos, text or calibration patterns, and one of each near-identical
  pair), and the frames of its ``vtest.avi`` and ``Megamind.avi``, decoded
  with OpenCV.  The .deb is fetched with ``apt-get download`` into the cache
  folder and unpacked there with ``dpkg -x``.

The fixed split (README, "Real model and data"); never tune on anything else:

- ``train/`` (training and calibration): vtest frames 0-499, Megamind 0-179;
- ``eval/``: the photos, vtest frames >= 500 and Megamind frames >= 180 whose
  index is a multiple of 10.

Photos keep their names (JPEGs byte for byte; PNGs re-encoded as JPEG);
frames are ``vtest_00012.jpg``.  ``train.txt`` and ``eval.txt`` list the
images by absolute path, sorted.  The output is built in a temp folder and
renamed into place; a stamp file records what made it, so a rerun with the
same inputs does nothing.

    .venv/bin/python scripts/make_images.py [--out data/images] [--cache build/cache]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
DARKNET_DATA = Path("/usr/share/darknet/data")
OPENCV_DOC = "opencv-doc"
EXAMPLES = Path("usr/share/doc/opencv-doc/examples/data")
# Photographs of things, from opencv-doc's examples/data/.  Left out: renders
# and drawings (Blender_Suzanne*, HappyFish, cards, ml, smarties, pic*,
# ellipses, detect_blob, mask, templ, tmpl), logos, textures and planar
# patterns (board, blox, graf*, starry_night, gradient, digits), aerial views
# (aero*), text (imageText*, text_*, notes, sudoku, pca_test1), calibration
# images (left*, right*, chessboard) and near-duplicates of a photo kept here
# (aloeR, basketball2, ela_modified, leuvenB, rubberwhale2; box.png is a crop
# of box_in_scene's box).
PHOTOS = (
    "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "box_in_scene.png", "building.jpg",
    "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg", "home.jpg", "leuvenA.jpg",
    "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png", "squirrel_cls.jpg",
    "stuff.jpg",
)
# (video, first evaluation frame): frames before it train, from it every 10th evaluates.
VIDEOS = (("vtest.avi", 500), ("Megamind.avi", 180))
EVAL_EVERY = 10
JPEG_QUALITY = 95
STAMP = ".stamp"


def fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(2)


def opencv_examples(cache: Path) -> Path:
    """opencv-doc's examples/data/, unpacked into ``cache`` once."""
    unpacked = cache / OPENCV_DOC
    if (unpacked / EXAMPLES / VIDEOS[0][0]).is_file():
        return unpacked / EXAMPLES
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{OPENCV_DOC}_*.deb"))
    if not debs:
        done = subprocess.run(["apt-get", "download", OPENCV_DOC], cwd=cache, capture_output=True, text=True)
        if done.returncode:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            done = subprocess.run(["apt-get", "download", OPENCV_DOC], cwd=cache, capture_output=True, text=True)
        debs = sorted(cache.glob(f"{OPENCV_DOC}_*.deb"))
        if done.returncode or not debs:
            fail(f"apt-get download {OPENCV_DOC} in {cache} failed (exit {done.returncode}): "
                 f"{done.stderr.strip()[-500:]}")
    stage = Path(tempfile.mkdtemp(prefix=".opencv-doc.", dir=cache))
    done = subprocess.run(["dpkg", "-x", str(debs[-1]), str(stage)], capture_output=True, text=True)
    if done.returncode:
        shutil.rmtree(stage)
        fail(f"dpkg -x {debs[-1]} failed: {done.stderr.strip()[-500:]}")
    shutil.rmtree(unpacked, ignore_errors=True)
    stage.rename(unpacked)
    return unpacked / EXAMPLES


def sources(examples: Path) -> list[Path]:
    """Every input file, in a fixed order."""
    files = sorted(DARKNET_DATA.glob("*.jpg")) + [examples / name for name in PHOTOS]
    files += [examples / video for video, _ in VIDEOS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not any(f.parent == DARKNET_DATA for f in files):
        fail(f"missing inputs: {', '.join(missing) or str(DARKNET_DATA / '*.jpg')} "
             f"(Debian packages darknet and {OPENCV_DOC})")
    return files


#: Bump when the output changes for the same inputs and settings.
FORMAT = 1


def key_of(files: list[Path]) -> str:
    """What the output depends on: the settings and every input's name and size."""
    settings = json.dumps([FORMAT, PHOTOS, VIDEOS, EVAL_EVERY, JPEG_QUALITY])
    digest = hashlib.sha256(settings.encode())
    for f in files:
        digest.update(f"{f.name} {f.stat().st_size}\n".encode())
    return digest.hexdigest()


def write_jpeg(image, path: Path) -> None:
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        fail(f"cannot write {path}")


def add_photos(files: list[Path], eval_dir: Path) -> None:
    names = set()
    for f in files:
        if f.suffix == ".avi":
            continue
        target = eval_dir / (f.stem + ".jpg")
        if target.name in names:
            fail(f"two photos named {target.name}")
        names.add(target.name)
        if f.suffix == ".jpg":
            shutil.copyfile(f, target)
        else:
            image = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if image is None:
                fail(f"{f}: OpenCV cannot read it")
            write_jpeg(image, target)


def add_frames(video: Path, first_eval: int, train_dir: Path, eval_dir: Path) -> int:
    """Decode ``video`` frame by frame into the split; the number of frames."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        fail(f"{video}: OpenCV cannot open it (no video backend?)")
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index < first_eval:
            write_jpeg(frame, train_dir / f"{video.stem}_{index:05d}.jpg")
        elif index % EVAL_EVERY == 0:
            write_jpeg(frame, eval_dir / f"{video.stem}_{index:05d}.jpg")
        index += 1
    capture.release()
    if index <= first_eval:
        fail(f"{video}: {index} frames decoded, expected more than {first_eval}")
    return index


def write_list(folder: Path, final: Path, target: Path) -> int:
    """``target`` lists the JPEGs of ``folder`` as they will be named under ``final``."""
    names = sorted(p.name for p in folder.glob("*.jpg"))
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("".join(f"{final / name}\n" for name in names))
    tmp.replace(target)
    return len(names)


def build(out: Path, cache: Path) -> dict:
    examples = opencv_examples(cache)
    files = sources(examples)
    key = key_of(files)
    stamp = out / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return json.loads(stamp.read_text()) | {"up_to_date": True}
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage.", dir=out))
    try:
        for split in ("train", "eval"):
            (stage / split).mkdir()
        add_photos(files, stage / "eval")
        frames = {video: add_frames(examples / video, first, stage / "train", stage / "eval")
                  for video, first in VIDEOS}
        counts = {}
        for split in ("train", "eval"):
            final = (out / split).resolve()
            shutil.rmtree(final, ignore_errors=True)
            (stage / split).rename(final)
            counts[split] = write_list(final, final, out / f"{split}.txt")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    record = {"key": key, "counts": counts, "frames": frames,
              "seconds": round(time.perf_counter() - start, 1)}
    tmp = stamp.with_name(STAMP + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(stamp)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "images")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "cache")
    args = parser.parse_args(argv)
    record = build(args.out, args.cache)
    state = "up to date" if record.get("up_to_date") else f"made in {record['seconds']} s"
    frames = ", ".join(f"{video} {n} frames" for video, n in record["frames"].items())
    print(f"make_images.py: {args.out}: {record['counts']['train']} training/calibration and "
          f"{record['counts']['eval']} evaluation images ({frames}; {state})")


if __name__ == "__main__":
    main()
