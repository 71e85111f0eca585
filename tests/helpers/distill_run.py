"""Helpers of the distillation tests (patches/0020-distill.patch): one
batch's distillation delta and loss through the binding, central finite
differences of that loss, and cfg text for teacher and student nets."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from darknet_sparse.darknet import network as darknet
from helpers.darknet_run import PATCHED
from helpers.distill_binding import backend  # noqa: F401 (the tests import it from here)

#: The binary under test (the patched build); backend() is the binding
#: module with the tests' own ds_distill_step (helpers/distill_binding.py).
DARKNET = PATCHED


def distill_options(teacher_cfg: Path, teacher_weights: Path, alpha: float | None = None,
                    temperature: float | None = None, extra: str = "") -> str:
    """The [net] lines that make a student of the teacher."""
    lines = [f"distill_cfg={teacher_cfg}", f"distill_weights={teacher_weights}"]
    if alpha is not None:
        lines.append(f"distill_alpha={alpha}")
    if temperature is not None:
        lines.append(f"distill_temperature={temperature}")
    return "\n".join(lines + ([extra] if extra else []))


def with_net_options(cfg_text: str, options: str) -> str:
    """``cfg_text`` with ``options`` as the first lines of its [net] section."""
    head, sep, tail = cfg_text.partition("[net]\n")
    assert sep, "the cfg has no [net] section"
    return f"{head}[net]\n{options}\n{tail}"


def distill_step(net: darknet.Network, x: np.ndarray, y: np.ndarray, layer: int) -> tuple[np.ndarray, float]:
    """One batch through ``ds_distill_step``: the forward pass in training
    mode, the teacher's pass and the distillation deltas, no update.
    Returns layer ``layer``'s delta (Darknet's -dL/dz) and its loss L."""
    ffi, lib = net._backend.ffi, net._backend.lib
    count = ffi.new("int *")
    assert lib.ds_layer_output(net._net, layer, count) != ffi.NULL
    n = count[0]
    delta = np.empty(n, np.float32)
    loss = ffi.new("double *")
    x = np.ascontiguousarray(x, np.float32)
    y = np.ascontiguousarray(y, np.float32)
    assert x.size == net.batch * net.inputs and y.size == net.batch * net._info().truths
    rc = lib.ds_distill_step(net._net, ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y), layer,
                             ffi.from_buffer("float[]", delta), n, loss)
    assert rc == n, f"ds_distill_step answered {rc}"
    return delta, float(loss[0])


def finite_difference(net: darknet.Network, x: np.ndarray, y: np.ndarray, layer: int, eps: float = 1e-3) -> np.ndarray:
    """dL/dx by central differences, x being the head's logits (the net's
    input: the head is its first layer).  The step is the float32 one that
    x +- eps actually takes."""
    grad = np.empty(x.size)
    for j in range(x.size):
        up, down = x.copy(), x.copy()
        up.flat[j] += np.float32(eps)
        down.flat[j] -= np.float32(eps)
        step = float(up.flat[j]) - float(down.flat[j])
        grad[j] = (distill_step(net, up, y, layer)[1] - distill_step(net, down, y, layer)[1]) / step
    return grad


def top_fraction_zeroed(net: darknet.Network, fraction: float) -> None:
    """Zero the ``fraction`` smallest-magnitude weights of every weights array."""
    for i in range(net.num_layers):
        for name, view in net.params(i).items():
            if name.endswith("weights"):
                cut = np.quantile(np.abs(view), fraction)
                view[np.abs(view) <= cut] = 0
