"""Darknet in-process, through the cffi binding to the patched build.

The only importer of the compiled modules: one per fork, ``_darknet``
(pjreddie's Darknet) and ``_darknet_alexeyab`` (AlexeyAB's), built from the
same cdef and shim by ``darknet-sparse build`` into the per-user folder, or by
``make binding`` in a checkout; :func:`darknet_sparse.darknet.home.find_binding`
says which file is used.  ``Network(cfg, weights, fork="auto")`` picks the
fork as ``threshold`` does (:func:`darknet_sparse.format.files.resolve_fork`:
AlexeyAB-only cfg features, then the file's size and header) and records it
(:attr:`Network.fork`, :attr:`Network.fork_reason`).
Importing this module always works; using a :class:`Network` where the
binding was not built raises :class:`BindingError`.  Every return code of a
``ds_*`` call goes through :func:`_check`.

Darknet calls ``exit()`` on bad input, so everything is checked here before C
sees it: the cfg and weights by the core reader (:func:`darknet_sparse.load`,
pjreddie rules), arrays by shape, row counts by Darknet's batch rules.

Parameter arrays are zero-copy float32 views of Darknet's memory, named as
in the ``.weights`` layout: ``biases``, ``scales``, ``rolling_mean``,
``rolling_variance``, ``weights``, prefixed with the sub-layer
(``input_layer.weights``, ``wz.biases``...) for rnn, gru, lstm and crnn.
Writing to them changes the network.  A view keeps its network alive.

On a GPU build the views show the host copies, which Darknet refreshes only
when it saves; everything else works the same.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import home
from ..format.cfg import read_cfg
from ..format.files import load, load_model, resolve_fork
from . import runner
from ..errors import BindingError
from ..format.layout import Model
from ..format.weightsfile import SAVED_VERSION, atomic_path, expected_size, seen_size

#: cfg options the patches add: ``[net]`` prune, prune_threshold; per layer prune_threshold.
NEW_OPTIONS = ("prune", "prune_threshold")
NOT_BUILT = f"the Darknet binding is not built: run `{home.BUILD_COMMAND}`"


@dataclass(frozen=True)
class Backend:
    """One compiled binding module: the package's own (patched) or another
    build's, such as the stock one the regression tests compare with."""

    ffi: Any
    lib: Any

    @property
    def patched(self) -> bool:
        """Whether it was built against the patched Darknet (prune calls, views)."""
        return hasattr(self.lib, "ds_param")

    @property
    def fork(self) -> str:
        """Whose Darknet it was built against: ``pjreddie`` or ``alexeyab``."""
        return self.ffi.string(self.lib.ds_fork()).decode()

    @property
    def rolling_rate(self) -> float:
        """The share of one training-mode pass's batch statistics in batch
        norm's rolling mean and variance: 0.01 in pjreddie's Darknet, 0.1 in
        AlexeyAB's."""
        return float(self.lib.ds_rolling_rate())


def backend(path: str | Path | None = None, fork: str = "pjreddie") -> Backend:
    """The binding of ``fork`` :func:`darknet_sparse.darknet.home.find_binding`
    finds, or the extension module file at ``path`` (such as a stock build's)."""
    return _load(str(home.find_binding(fork) if path is None else path))


@lru_cache(maxsize=None)
def _load(path: str) -> Backend:
    name = Path(path).name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or not Path(path).is_file():
        raise BindingError(f"{NOT_BUILT} ({path} not found)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise BindingError(f"{path}: cannot load the binding ({exc}); rebuild it: {home.BUILD_COMMAND}") from None
    return Backend(module.ffi, module.lib)


def _check(rc: int, message: str) -> int:
    """The one check of a ``ds_*`` return code: negative is a failure (a
    :class:`BindingError` saying ``message``), anything else is returned."""
    if rc < 0:
        raise BindingError(message)
    return rc


def _integer(value: Any, message: str) -> int:
    """``value`` as an int, else a :class:`BindingError` saying ``message``
    (C would get a truncated float, or cffi raise a TypeError)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BindingError(message)
    return int(value)


def seed(value: int, using: Backend | None = None) -> None:
    """Seed Darknet's random numbers (initial weights, dropout, ...) as a
    cfg's ``[net] seed=value`` does in the patched Darknet
    (patches/0005-seed.patch; AlexeyAB's: patches/alexeyab/0006-seed.patch,
    where the layers that reseed from the clock then reseed with ``value``):
    ``srand(value)``, so a stock binding draws the same numbers."""
    message = f"a seed is a whole number from 0 to {2**32 - 1}, not {value!r}"
    if not 0 <= _integer(value, message) < 2**32:
        raise BindingError(message)
    (using or backend()).lib.ds_seed(int(value))


def saved_size(model: Model, fork: str) -> int:
    """The size of the file ``fork``'s ``save_weights`` writes for ``model``."""
    major, minor, _ = SAVED_VERSION[fork]
    return expected_size(model, 12 + seen_size(major, minor, fork))


def build_info() -> dict[str, Any]:
    """Where each part is (:func:`darknet_sparse.darknet.home.status`), plus the new
    cfg options the binary understands (found in the binary itself) and
    whether the binding loads."""
    info = home.status()
    data = Path(info["binary"]).read_bytes() if info["exists"] else b""
    try:
        backend()
        binding = True
    except BindingError:
        binding = False
    return {**info, "options": [name for name in NEW_OPTIONS if b"\0" + name.encode() + b"\0" in data],
            "binding": binding}


def choose_fork(cfg: str | Path, weights: str | Path | None = None, fork: str = "auto") -> tuple[str, str]:
    """The fork that runs ``cfg`` (and ``weights``) and why: ``fork`` if not
    ``auto``, else as ``threshold`` reads it
    (:func:`darknet_sparse.format.files.resolve_fork`)."""
    return resolve_fork(read_cfg(cfg), fork, weights)


def check_files(cfg: str | Path, weights: str | Path | None, fork: str = "auto") -> str:
    """Let the core reader reject what would make Darknet exit() under the
    chosen fork, and, where that is pjreddie's, what its parser would
    misread: an AlexeyAB-only cfg.  Returns the fork.  :class:`Network` calls
    it; so does a caller that hands Darknet a copy of the cfg, so that errors
    name the user's files."""
    chosen = choose_fork(cfg, weights, fork)[0] if Path(cfg).is_file() else ("pjreddie" if fork == "auto" else fork)
    if chosen == "pjreddie" and Path(cfg).is_file():
        runner.check_cfg(cfg)
    if weights is None:
        load_model(cfg, fork=chosen)
    else:
        load(cfg, weights, fork=chosen)
    return chosen


class Network:
    """A Darknet network loaded in this process."""

    def __init__(self, cfg: str | Path, weights: str | Path | None = None, *, clear: bool = False,
                 using: Backend | None = None, fork: str = "auto"):
        """Parse ``cfg`` (random initial weights, see :func:`seed`), then load
        ``weights`` if given; ``clear`` resets the images-seen counter.
        ``fork`` (auto, pjreddie, alexeyab) picks the binding; ``using``, a
        binding, fixes it."""
        if using is not None:
            self.fork, self.fork_reason = using.fork, "the binding given"
            if fork not in ("auto", using.fork):
                raise BindingError(f"fork={fork} but the binding given is {using.fork}'s")
        else:
            self.fork, self.fork_reason = choose_fork(cfg, weights, fork) if Path(cfg).is_file() else (
                "pjreddie" if fork == "auto" else fork, "as requested")
        self._backend = using or backend(fork=self.fork)
        check_files(cfg, weights, self.fork)
        ffi, lib = self._backend.ffi, self._backend.lib
        weights_arg = ffi.NULL if weights is None else os.fsencode(weights)
        handle = lib.ds_load(os.fsencode(cfg), weights_arg, int(clear))
        if handle == ffi.NULL:
            raise BindingError(f"{cfg}: Darknet could not allocate the network (out of memory)")
        self._net = ffi.gc(handle, lib.ds_free)
        self._saved_size = saved_size(load_model(cfg, fork=self.fork), self.fork)

    def _info(self) -> Any:
        info = self._backend.ffi.new("ds_info *")
        self._backend.lib.ds_get_info(self._net, info)
        return info

    @property
    def num_layers(self) -> int:
        return self._info().layers

    def layer_type(self, index: int) -> str:
        """Darknet's name of the layer's type (``convolutional``, ``rnn``...)."""
        self._check_layer(index)
        name = self._backend.lib.ds_layer_type(self._net, index)
        if name == self._backend.ffi.NULL:
            raise BindingError(f"Darknet has no layer {index}")
        return self._backend.ffi.string(name).decode()

    @property
    def batch(self) -> int:
        """Images per forward pass (``batch/subdivisions`` of the cfg, times ``time_steps``)."""
        return self._info().batch

    @property
    def subdivisions(self) -> int:
        """Passes per weight update (the cfg's ``subdivisions``)."""
        return self._info().subdivisions

    def set_batch(self, batch: int) -> None:
        """Run ``batch`` images per pass; at most the batch the cfg was loaded with."""
        message = f"batch must be 1..{self._info().max_batch} (the cfg's), not {batch!r}"
        _check(self._backend.lib.ds_set_batch(self._net, _integer(batch, message)), message)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width); zeros for nets with only ``inputs=``."""
        info = self._info()
        return info.c, info.h, info.w

    @property
    def inputs(self) -> int:
        """Values per input row (C*H*W, or the cfg's ``inputs=``)."""
        return self._info().inputs

    @property
    def outputs(self) -> int:
        """Values per output row."""
        return self._info().outputs

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs for N inputs (N, C, H, W) or (N, inputs) -> (N, outputs), in inference mode."""
        x = self._rows(x, "x", self.inputs)
        out = np.empty((len(x), self.outputs), np.float32)
        self._forward(x, out, train=False)
        return out

    def forward_train(self, x: np.ndarray) -> None:
        """A training-mode forward pass with no weight update: batch norm uses
        and updates its rolling statistics (recalibration); N must be a
        multiple of :attr:`batch`."""
        x = self._rows(x, "x", self.inputs)
        self._check_multiple(len(x))
        self._forward(x, None, train=True)

    def _forward(self, x: np.ndarray, out: np.ndarray | None, train: bool) -> None:
        ffi = self._backend.ffi
        out_ptr = ffi.NULL if out is None else ffi.from_buffer("float[]", out)
        _check(self._backend.lib.ds_forward(self._net, ffi.from_buffer("float[]", x), out_ptr, len(x), int(train)),
               "Darknet refused the forward pass")

    def train(self, x: np.ndarray, y: np.ndarray, iterations: int = 1) -> np.ndarray:
        """``iterations`` passes of Darknet's ``train_network`` over (x, y);
        returns each pass's loss.  N must be a multiple of :attr:`batch`;
        Darknet updates the weights every ``subdivisions`` batches, so
        N = batch * subdivisions is one Darknet iteration per pass.

        pjreddie's fork only: through AlexeyAB's binding the fork's
        train_network diverged from run to run on a small classifier (its
        losses inf or nan after the first update, differently each run), so
        it is refused; train in that fork with ``darknet detector train``,
        as the loop does."""
        if self.fork != "pjreddie":
            raise BindingError("Network.train runs pjreddie's train_network only; in AlexeyAB's fork train with "
                               "its `detector train` (darknet-sparse loop --fork alexeyab)")
        info = self._info()
        x = self._rows(x, "x", info.inputs)
        y = self._rows(y, "y", info.truths)
        if len(x) != len(y):
            raise BindingError(f"x has {len(x)} rows but y has {len(y)}")
        self._check_multiple(len(x))
        if _integer(iterations, f"iterations must be a whole number, not {iterations!r}") < 1:
            raise BindingError(f"iterations must be at least 1, not {iterations}")
        losses = np.empty(iterations, np.float32)
        ffi = self._backend.ffi
        _check(self._backend.lib.ds_train(self._net, ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y),
                                          len(x), iterations, ffi.from_buffer("float[]", losses)),
               "Darknet refused the training data")
        return losses

    def save(self, path: str | Path) -> None:
        """Save the weights with Darknet's ``save_weights`` (so a prune
        threshold applies), atomically: a temporary file renamed over ``path``.
        ``save_weights`` does not check its writes, so the file's size is
        checked against the one the cfg implies (a full disk writes less)."""
        with atomic_path(path) as tmp:
            _check(self._backend.lib.ds_save(self._net, os.fsencode(tmp)), f"{path}: Darknet could not write {tmp}")
            written = os.stat(tmp).st_size
            if written != self._saved_size:
                raise BindingError(f"{path}: Darknet wrote {written} bytes instead of {self._saved_size} (disk full?)")

    # Parameters and the prune options: patched Darknet only.

    def params(self, index: int) -> dict[str, np.ndarray]:
        """Every parameter array of layer ``index``, as zero-copy views."""
        self._check_layer(index)
        ffi, lib = self._sparse()
        sub, name, count = ffi.new("const char **"), ffi.new("const char **"), ffi.new("int *")
        arrays: dict[str, np.ndarray] = {}
        k = 0
        while (ptr := lib.ds_param(self._net, index, k, sub, name, count)) != ffi.NULL:
            prefix = "" if sub[0] == ffi.NULL else ffi.string(sub[0]).decode() + "."
            arrays[prefix + ffi.string(name[0]).decode()] = self._view(ptr, count[0])
            k += 1
        return arrays

    def _view(self, ptr: Any, count: int) -> np.ndarray:
        ffi = self._backend.ffi
        # The buffer keeps `owned` alive, whose finaliser holds this Network:
        # a view never outlives the memory it shows.
        owned = ffi.gc(ptr, lambda _ptr, network=self: None)
        return np.frombuffer(ffi.buffer(owned, 4 * count), np.float32)

    @property
    def prune(self) -> bool:
        """The prune phase: zero weights stay zero through every update."""
        ffi, lib = self._sparse()
        return _check(lib.ds_get_prune(self._net, -1, ffi.new("float *")), "Darknet refused the prune query") != 0

    def set_prune(self, on: bool) -> None:
        _check(self._sparse()[1].ds_set_prune(self._net, int(on)), "Darknet refused the prune flag")

    def prune_threshold(self, layer: int | None = None) -> float:
        """The save-time threshold of the net, or of one layer."""
        ffi, lib = self._sparse()
        if layer is not None:
            self._check_layer(layer)
        value = ffi.new("float *")
        _check(lib.ds_get_prune(self._net, -1 if layer is None else layer, value),
               f"Darknet has no layer {layer}")
        return float(value[0])

    def set_prune_threshold(self, threshold: float, layer: int | None = None) -> None:
        """Weights with |w| < threshold are saved as 0 (and zeroed in memory
        when :attr:`prune` is on).  Without ``layer``: the net's and every
        layer's threshold, cfg overrides included."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not threshold >= 0:
            raise BindingError(f"threshold must be a number >= 0, not {threshold!r}")
        if layer is not None:
            self._check_layer(layer)
        _check(self._sparse()[1].ds_set_threshold(self._net, -1 if layer is None else layer, threshold),
               f"Darknet has no layer {layer}")

    # Checks.

    def _sparse(self) -> tuple[Any, Any]:
        if not self._backend.patched:
            raise BindingError(f"this binding was built against a stock Darknet: rebuild with `{home.BUILD_COMMAND}`")
        return self._backend.ffi, self._backend.lib

    def _check_layer(self, index: int) -> None:
        count = self.num_layers
        if not 0 <= _integer(index, f"a layer is a whole number, not {index!r}") < count:
            raise BindingError(f"layer {index} does not exist: the network has layers 0..{count - 1}")

    def _check_multiple(self, rows: int) -> None:
        batch = self.batch
        if rows == 0 or rows % batch:
            raise BindingError(f"{rows} rows: Darknet needs a positive multiple of the batch ({batch})")

    def _rows(self, a: np.ndarray, what: str, width: int) -> np.ndarray:
        """``a`` as C-contiguous float32 rows of ``width`` values."""
        try:
            a = np.ascontiguousarray(a, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise BindingError(f"{what} must be an array of numbers ({exc})") from None
        c, h, w = self.input_shape
        if what == "x" and a.ndim == 4 and a.shape[1:] != (c, h, w):
            raise BindingError(f"x has images of shape {a.shape[1:]}, the network takes {(c, h, w)}")
        if a.ndim < 2 or int(np.prod(a.shape[1:])) != width:
            raise BindingError(f"{what} must be (N, {width}) or (N, C, H, W) with C*H*W = {width}, "
                               f"not an array of shape {a.shape}")
        return a.reshape(len(a), width)

    @property
    def on_gpu(self) -> bool:
        """Whether Darknet computes on a GPU, where the views are host copies
        its passes neither read nor update."""
        return bool(self._backend.lib.ds_on_gpu(self._net))

    def layer_outputs(self, x: np.ndarray, layers: list[int]) -> list[np.ndarray]:
        """The outputs of ``layers`` for N inputs (N, C, H, W) or (N, inputs),
        in inference mode: one (N, values) array per layer, such as every
        ``[yolo]`` head of a detector, where :meth:`predict` gives the last."""
        for index in layers:
            self._check_layer(index)
        x = self._rows(x, "x", self.inputs)
        ffi, lib = self._sparse()
        batch, count = self.batch, ffi.new("int *")

        def output(index: int) -> np.ndarray:
            ptr = lib.ds_layer_output(self._net, index, count)
            if ptr == ffi.NULL:
                raise BindingError(f"Darknet has no output for layer {index}")
            return np.frombuffer(ffi.buffer(ptr, 4 * count[0]), np.float32).reshape(batch, -1)

        found = [[output(index)[:0].copy()] for index in layers]
        for start in range(0, len(x), batch):
            rows = x[start:start + batch]
            self._forward(rows, None, train=False)
            for arrays, index in zip(found, layers):
                arrays.append(output(index)[:len(rows)].copy())
        return [np.concatenate(arrays) for arrays in found]

    # Detection: one image as `darknet detector test` computes it (_shim_detect.c).

    def detector_error(self) -> str | None:
        """Why this network cannot detect (last layer not [yolo], [region]
        or [detection], mixed class counts, not 3 channels), or None."""
        ffi = self._backend.ffi
        reason = self._backend.lib.ds_detector_error(self._net)
        return None if reason == ffi.NULL else ffi.string(reason).decode()

    @property
    def rolling_rate(self) -> float:
        """The share of a training-mode pass in batch norm's rolling
        statistics, in this network's fork (:attr:`Backend.rolling_rate`)."""
        return self._backend.rolling_rate

    @property
    def letterbox(self) -> bool:
        """Whether :meth:`detect` letterboxes the image, as the fork's
        ``detector test`` does: pjreddie's always; AlexeyAB's only with
        ``letter_box=1`` in ``[net]``, else a plain resize to the input size."""
        return bool(self._backend.lib.ds_detect_letterbox(self._net))

    def set_letterbox(self, on: bool = True) -> None:
        """Letterbox in :meth:`detect` from now on, as AlexeyAB's
        ``detector test -letter_box`` (pjreddie's always letterboxes: it
        refuses ``on=False``)."""
        _check(self._backend.lib.ds_set_letterbox(self._net, int(bool(on))),
               "pjreddie's detector test always letterboxes")

    @property
    def preprocessing(self) -> str:
        """How :meth:`detect` prepares an image, in words, naming the fork."""
        c, h, w = self.input_shape
        if self.fork == "pjreddie":
            return f"letterboxed to {w}x{h} (pjreddie's detector test)"
        if self.letterbox:
            return f"letterboxed to {w}x{h} (AlexeyAB's detector test with letter_box=1 in [net] or -letter_box)"
        return (f"resized to {w}x{h} without letterbox (AlexeyAB's detector test; "
                "letter_box=1 in [net] would letterbox)")

    @property
    def detector_classes(self) -> int:
        """How many classes each detected box has probabilities for."""
        reason = self.detector_error()
        if reason:
            raise BindingError(f"this network cannot detect: {reason}")
        return self._backend.lib.ds_detector_classes(self._net)

    def detect(self, image: str | Path, thresh: float, hier: float = 0.5, nms: float = 0.45
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """The fork's own path for one image file (its ``detector test``):
        pjreddie's ``load_image_color``, ``letterbox_image``,
        ``network_predict`` at batch 1, ``get_network_boxes`` over every
        detection layer, ``do_nms_sort`` (``nms`` 0: none); AlexeyAB's
        ``load_image``, ``resize_image`` (``letterbox_image`` where
        :attr:`letterbox`), ``get_network_boxes`` with ``letter``, and the
        last layer's ``nms_kind`` (``do_nms_sort`` or ``diounms_sort``).  Returns boxes (n, 4: centre x, y, width, height
        as fractions of the image), probabilities (n, classes: 0 at or below
        ``thresh`` or suppressed), objectness (n,) and the image's (width,
        height).  :func:`darknet_sparse.darknet.detect.detect` wraps this."""
        for name, value in (("thresh", thresh), ("hier", hier), ("nms", nms)):
            if not 0 <= value <= 1:
                raise BindingError(f"{name} must be in [0, 1], not {value}")
        reason = self.detector_error()
        if reason:
            raise BindingError(f"this network cannot detect: {reason}")
        ffi, lib = self._backend.ffi, self._backend.lib
        error = ffi.new("const char **")
        found = lib.ds_detect(self._net, os.fsencode(image), thresh, hier, nms, error)
        if found == ffi.NULL:
            raise BindingError(f"{image}: Darknet cannot read the image ({ffi.string(error[0]).decode()})")
        found = ffi.gc(found, lib.ds_dets_free)
        classes, width, height = ffi.new("int *"), ffi.new("int *"), ffi.new("int *")
        n = _check(lib.ds_dets_count(found, classes, width, height), f"{image}: Darknet lost the detected boxes")
        boxes = np.zeros((n, 4), np.float32)
        probs = np.zeros((n, classes[0]), np.float32)
        objectness = np.zeros(n, np.float32)
        if n:
            lib.ds_dets_read(found, ffi.from_buffer("float[]", boxes), ffi.from_buffer("float[]", probs),
                             ffi.from_buffer("float[]", objectness))
        return boxes, probs, objectness, (width[0], height[0])
