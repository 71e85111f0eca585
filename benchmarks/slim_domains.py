"""Does slim's calibration carry to images unlike it?  A probe inside the training split.

``benchmarks/slim.md`` scores ``slim --images`` on the evaluation split's two
parts: later frames of the two training videos keep their detections, the
photos lose them.  This probe asks the same question without touching the
evaluation split: slim yolov3-tiny to 50% of its FLOPs calibrated on 64
training frames of one video (vtest), then score agreement with the dense
model on other training frames of that video and on the training frames of
the other video (Megamind, a cartoon), for the choices a user has:

- the data rank without the refit (``--no-refit``), and with it (the
  default: the ridge chosen on held-out calibration images);
- the refit held nearer the dense filters (one fixed, larger ridge);
- channels by |gamma| relative to its layer's mean (``--rank layer``, a
  more even cut) or by |gamma| alone, each refit.

Prints one JSON line per choice.  About 25 minutes on 2 cores.

    .venv/bin/python benchmarks/slim_domains.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from darknet_sparse.analysis import evaluate
from darknet_sparse.analysis.metrics import Remembered
from darknet_sparse.darknet import images
from darknet_sparse.darknet.images import default_resize
from darknet_sparse.darknet.network import Network
from darknet_sparse.format.files import load, load_model
from darknet_sparse.structured import datarank, reconstruct
from darknet_sparse.structured import slim as slim_
from darknet_sparse.structured.channels import channel_graph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402

CFG, WEIGHTS = ROOT / "models" / "yolov3-tiny.cfg", ROOT / "models" / "yolov3-tiny.weights"
TRAIN = ROOT / "data" / "images" / "train.txt"
FLOPS = 0.5
CALIBRATION = 64
#: (name, rank, ridges): ridges None means no refit.
CHOICES = (("data rank, no refit", "data", None), ("data rank + refit", "data", reconstruct.RIDGES),
           ("data rank + refit, ridge 0.3", "data", (0.3,)), ("data rank + refit, ridge 1", "data", (1.0,)),
           ("layer |gamma| + refit", "layer", reconstruct.RIDGES), ("|gamma| + refit", "gamma", reconstruct.RIDGES))


def main(work: Path = ROOT / "build" / "slim-domains") -> None:
    train = images.image_paths(TRAIN)
    vtest = [p for p in train if Path(p).name.startswith("vtest_")]
    megamind = [p for p in train if Path(p).name.startswith("Megamind_")]
    chosen = set(np.random.default_rng(0).choice(len(vtest), CALIBRATION, replace=False).tolist())
    calibration = [p for i, p in enumerate(vtest) if i in chosen]
    same = [p for i, p in enumerate(vtest) if i not in chosen][::9]
    other = megamind[::3]
    work.mkdir(parents=True, exist_ok=True)
    wf = load(CFG, WEIGHTS)
    dense = Network(CFG, WEIGHTS)
    x = images.load_batch(calibration, dense.input_shape, default_resize(wf.model))
    graph = channel_graph(wf.model)
    scores = datarank.order(graph, wf.model, datarank.measure(dense, wf.model, graph, x))
    reference = Remembered(dense)
    print(json.dumps({"calibration": f"{len(calibration)} vtest training frames", "flops_removed": FLOPS,
                      "same video": len(same), "other video": len(other)}), flush=True)
    for k, (name, rank, ridges) in enumerate(CHOICES):
        choice = slim_.choose(wf, rank=rank, scores=scores if rank == "data" else None, target_flops=FLOPS)
        target = work / f"choice-{k}.weights"
        slim_.apply(wf, choice, target)
        if ridges is not None:
            net = Network(slim_.cfg_beside(target), target)
            reconstruct.reconstruct(dense, net, wf.model, choice.graph, choice.kept, x, ridges=ridges)
            net.save(target)
        net = Remembered(Network(slim_.cfg_beside(target), target))
        row = {"choice": name, "filters": [layer.output[0] for layer in load_model(slim_.cfg_beside(target)).layers
                                           if layer.type == "convolutional"]}
        for part, paths in (("same video", same), ("other video", other)):
            row[part] = evaluate.evaluate_detector(net, paths, reference=reference).map50
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
