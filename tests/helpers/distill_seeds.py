"""The numbers test_distill.py's training tests bound, for several seeds:
a bound one seed meets but others miss would be a hard-coded result.

    .venv/bin/python tests/helpers/distill_seeds.py 1 2 3 ...   (from the repository root)

Prints one line per seed: the retrained fixture's top-1 (true and rotated
labels) of the pruned start, the teacher-trained and the labels-trained
students, and the channel-pruned student's.  The same steps as the tests."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import test_distill as t  # noqa: E402
from darknet_sparse.darknet import network as darknet  # noqa: E402
from darknet_sparse.darknet.examples import classifier_top1, write_digits  # noqa: E402
from helpers.darknet_run import rotated_labels  # noqa: E402


def digits_sets(root: Path) -> dict[str, Path]:
    """The test module's ``digits`` fixture."""
    return rotated_labels(write_digits(root / "digits"))


def one_seed(root: Path, digits: dict[str, Path], seed: int) -> dict[str, float]:
    found = {}
    net = darknet.Network(t.DIGITS_CFG, t.DIGITS_WEIGHTS, using=t.backend())
    t.top_fraction_zeroed(net, 0.7)
    start = root / "pruned.weights"
    net.save(start)
    for which, data in digits.items():
        found[f"start {which}"] = classifier_top1(t.DARKNET, data, t.DIGITS_CFG, start)
    for name, alpha in (("teacher", 1), ("labels", 0)):
        cfg = t.digits_student(root / name, digits["rotated"],
                               t.distill_options(t.DIGITS_CFG, t.DIGITS_WEIGHTS, alpha, 2,
                                                 "prune=1\nsparse_forward=sparse"), 60, seed=seed)
        weights = t.train_classifier(root / name, start, teacher=alpha > 0)
        for which, data in digits.items():
            found[f"{name} {which}"] = classifier_top1(t.DARKNET, data, cfg, weights)
    text = t.DIGITS_CFG.read_text()
    for wide, narrow in (("filters=16", "filters=8"), ("filters=32", "filters=16"), ("filters=64", "filters=32"),
                         ("output=96", "output=48")):
        text = text.replace(f"\n{wide}\n", f"\n{narrow}\n")
    cfg = t.digits_student(root / "half", digits["rotated"], t.distill_options(t.DIGITS_CFG, t.DIGITS_WEIGHTS, 1, 2),
                           200, cfg_text=text, seed=seed)
    weights = t.train_classifier(root / "half", None, teacher=True)
    for which, data in digits.items():
        found[f"half {which}"] = classifier_top1(t.DARKNET, data, cfg, weights)
    return found


def main(seeds: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        digits = digits_sets(Path(tmp))
        for seed in seeds:
            root = Path(tmp) / f"seed{seed}"
            root.mkdir()
            found = one_seed(root, digits, seed)
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in found.items()), flush=True)


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or list(range(1, 11)))
