"""analysis/metrics.py: Darknet's class ranking, the labelled set's check,
the reference-detections cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from darknet_sparse.analysis import metrics
from darknet_sparse.errors import InputError


def test_first_max_breaks_ties_and_nans_as_darknets_top_k():
    outputs = np.array([[0.1, 0.5, 0.5], [np.nan, 0.2, 0.1], [0.3, np.nan, 0.4], [2, 2, 2]], np.float32)
    assert metrics.first_max(outputs).tolist() == [1, 0, 2, 0]


def test_top_k_ranks_an_earlier_index_first_among_equals():
    outputs = np.array([[0.1, 0.5, 0.5, 0.2], [3, 1, 2, 3]], np.float32)
    assert metrics.top_k(outputs, 2).tolist() == [[1, 2], [0, 3]]


def test_hits_counts_top1_and_topk():
    outputs = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]], np.float32)
    assert metrics.hits(outputs, np.array([1, 1, 0]), 2) == (1, 2)


class _Outputs:
    outputs = 3


def test_labels_past_the_networks_outputs_are_an_input_error(tmp_path: Path):
    (tmp_path / "labels.txt").write_text("qqa\nqqb\nqqc\nqqd\n")
    for name in ("x_qqa.png", "x_qqd.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "valid.list").write_text(f"{tmp_path / 'x_qqa.png'}\n{tmp_path / 'x_qqd.png'}\n")
    data = tmp_path / "m.data"
    data.write_text(f"classes=4\nvalid={tmp_path / 'valid.list'}\nlabels={tmp_path / 'labels.txt'}\n")
    with pytest.raises(InputError, match="labels reach class 3, the network has 3 outputs"):
        metrics.labelled_set(_Outputs(), data)


def test_remembered_asks_the_network_once_per_image_and_setting():
    calls = []

    class Net:
        detector_classes = 80

        def detect(self, image, thresh, hier, nms):
            calls.append((image, thresh))
            return len(calls)

    reference = metrics.Remembered(Net())
    assert [reference.detect("a.jpg", 0.5, 0.5, 0.45) for _ in range(3)] == [1, 1, 1]
    assert reference.detect("a.jpg", 0.25, 0.5, 0.45) == 2
    assert calls == [("a.jpg", 0.5), ("a.jpg", 0.25)] and reference.detector_classes == 80
