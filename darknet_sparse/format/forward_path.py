"""Which CPU forward path the patched Darknet takes for a layer.

``patches/0010-sparse-forward.patch`` gives convolutional and connected layers
a sparse forward pass over a compressed-row copy of their non-zero weights.
``[net] sparse_forward=auto|dense|sparse`` chooses it; under ``auto`` (the
default) a layer goes sparse when

    100 * nonzero <= MAX_DENSITY_PCT[type] * weights

(``wants_sparse`` in ``src/sparse_forward.c``; this module mirrors it).  A
non-zero weight is one that is not +0.0 or -0.0 (NaN counts as non-zero).
``xnor`` and ``binary`` convolutions always stay dense.  Layers of other
types have no choice: :func:`forward_path` returns None for them, also for
the conv/connected sub-layers inside ``rnn``, ``gru``, ``lstm`` and ``crnn``.
"""
from __future__ import annotations

from .cfg import Section
from ..errors import CfgError

MODES = ("auto", "dense", "sparse")

#: Highest density (percent non-zero) at which ``auto`` is sparse, per type.
#: Conv: the sparse kernel is never slower than upstream's GEMM, so 50% only
#: keeps its copy (8 bytes per non-zero) no bigger than the dense weights.
#: Connected: the sparse dot products overtake upstream's at about 35%.
MAX_DENSITY_PCT = {"convolutional": 50, "connected": 30}


def sparse_forward_mode(net: Section) -> str:
    """``[net] sparse_forward`` (``auto`` when absent); Darknet refuses any
    other value, and so does this."""
    mode = net.get_str("sparse_forward", "auto")
    if mode not in MODES:
        raise net.error(f"sparse_forward={mode}: expected {', '.join(MODES)}", "sparse_forward")
    return mode


def forward_path(layer_type: str, nonzero: int, weights: int, mode: str = "auto",
                 binary: bool = False) -> str | None:
    """``"sparse"`` or ``"dense"`` for a convolutional or connected layer with
    ``nonzero`` of its ``weights`` non-zero, None for any other type.
    ``binary`` is a convolution's ``xnor=1`` or ``binary=1``."""
    if mode not in MODES:
        raise CfgError(f"sparse_forward mode {mode!r}: expected {', '.join(MODES)}")
    if layer_type not in MAX_DENSITY_PCT:
        return None
    if binary or mode == "dense":
        return "dense"
    if mode == "sparse" or 100 * nonzero <= MAX_DENSITY_PCT[layer_type] * weights:
        return "sparse"
    return "dense"
