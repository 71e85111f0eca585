"""darknet-sparse: prune Darknet (YOLO) ``.weights`` files layer by layer.

The Python API a notebook uses::

    import darknet_sparse as ds
    wf = ds.load("yolov3-tiny.cfg", "yolov3-tiny.weights")   # fork="auto"
    wf.model.layers[0].params, wf.arrays(0)["weights"]
    result = ds.threshold(wf, "out.weights", ds.Magnitude(0.7))   # or Absolute(t), Sensitivity(k),
                                                                   # Triangle(start, end), Global(s)

Data flows one way: cfg -> layout -> weights file -> policy -> writer -> reports
(``format/`` -> ``pruning/`` -> ``reports`` -> ``structured/``, ``analysis/``,
``workflow/`` -> ``cli/``; ``darknet/``, the binding, is a side branch).
This module only re-exports.
"""
from .errors import (BindingError, CfgError, DarknetRunError, DarknetSparseError, InputError, OutputError,
                     PolicyError, WeightsFormatError)
from .format.cfg import Section, parse_cfg, read_cfg
from .format.files import find_cfg, load, load_model, resolve_fork
from .format.layout import FORKS, Layer, Model, Param, alexeyab_markers, build_model
from .format.weightsfile import WeightsFile, expected_size, header_revision, seen_size
from .pruning.policies import Absolute, Global, Magnitude, Policy, Sensitivity, Triangle
from .pruning.prune import threshold

__all__ = [
    "Absolute", "BindingError", "CfgError", "DarknetRunError", "DarknetSparseError", "FORKS", "Global",
    "InputError", "Layer", "Magnitude", "Model", "OutputError", "Param", "Policy", "PolicyError", "Section",
    "Sensitivity", "Triangle", "WeightsFile", "WeightsFormatError", "alexeyab_markers", "build_model", "expected_size",
    "find_cfg", "header_revision", "load", "load_model", "parse_cfg", "read_cfg", "resolve_fork", "seen_size",
    "threshold",
]
