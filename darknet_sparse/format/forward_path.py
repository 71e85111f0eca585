"""Which CPU forward path the patched Darknet takes for a layer.

``patches/0010-sparse-forward.patch`` gives convolutional and connected layers
a sparse forward pass over a compressed-row copy of their non-zero weights
(the kernels of ``patches/kernels/sparse_kernels.c``).
``[net] sparse_forward=auto|exact|dense|sparse`` chooses it: ``exact`` and
``sparse`` take it on every such layer, ``dense`` on none; under ``auto``
(the default) every convolution goes sparse on a CPU with AVX2+FMA or
AVX-512 (``vector``: the FAST kernel beats upstream's GEMM at any density
there), and otherwise a layer goes sparse when

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

MODES = ("auto", "exact", "dense", "sparse")

#: Highest density (percent non-zero) at which ``auto`` is sparse, per type.
#: Conv (only on a CPU without AVX2): the plain C kernel overtakes upstream's
#: GEMM at about 60%.
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
                 binary: bool = False, vector: bool = True) -> str | None:
    """``"sparse"`` or ``"dense"`` for a convolutional or connected layer with
    ``nonzero`` of its ``weights`` non-zero, None for any other type.
    ``binary`` is a convolution's ``xnor=1`` or ``binary=1``; ``vector``
    whether the CPU has AVX2+FMA or AVX-512 (the kernels' dispatch)."""
    if mode not in MODES:
        raise CfgError(f"sparse_forward mode {mode!r}: expected {', '.join(MODES)}")
    if layer_type not in MAX_DENSITY_PCT:
        return None
    if binary or mode == "dense":
        return "dense"
    if mode in ("sparse", "exact") or (vector and layer_type == "convolutional"):
        return "sparse"
    if 100 * nonzero <= MAX_DENSITY_PCT[layer_type] * weights:
        return "sparse"
    return "dense"
