"""The fork-neutral sparse kernels (patches/kernels/sparse_kernels.c) on
their own, through ctypes (helpers/kernels.py), against a naive numpy
reference, for what pjreddie's Darknet cannot express: dilation,
stride_x != stride_y, non-square kernels; and groups, depthwise, padding,
1x1, batches.  Every dispatch path is forced in turn (AVX-512, AVX2, plain
C); this CPU must have the ones it is asked to run (the test says which are
missing instead of passing without them).

EXACT must equal, bit for bit, float32 sums that start at 0 and add each
product in k order, one rounding per multiply and per add (pjreddie's
gemm_nn); FAST must be within RTOL of a float64 sum, relative to the
largest |output| of the layer: max |fast - ref| <= RTOL * max |ref|.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.kernels import EXACT, FAST, Geom, Kernels, compile_kernels, reference_conv

RTOL = 1e-5
ISAS = ("avx512", "avx2", "generic")
DENSITIES = (1.0, 0.5, 0.1, 0.02, 0.0)

#: (c, h, w, n, groups, (kh, kw), (stride_y, stride_x), dilation, pad, batch)
SHAPES = {
    "3x3_pad1": (5, 11, 17, 7, 1, (3, 3), (1, 1), 1, 1, 1),
    "groups_stride_y2": (4, 9, 10, 6, 2, (3, 3), (2, 1), 1, 1, 2),
    "depthwise_stride_x2_dilation2": (6, 13, 12, 6, 6, (3, 3), (1, 2), 2, 2, 1),
    "5x3_dilation2_wide": (3, 20, 70, 8, 1, (5, 3), (1, 1), 2, 1, 1),
    "1x1": (8, 13, 13, 16, 1, (1, 1), (1, 1), 1, 0, 1),
    "1x1_stride2": (8, 13, 13, 16, 1, (1, 1), (2, 2), 1, 0, 1),
    "2x4_stride3x2_nopad": (4, 7, 7, 5, 1, (2, 4), (3, 2), 1, 0, 1),
    "many_filters_tiles": (24, 20, 23, 67, 1, (3, 3), (1, 1), 1, 1, 1),
    "dilation3_stride2": (5, 19, 16, 9, 1, (3, 3), (2, 2), 3, 3, 1),
}


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Kernels:
    return Kernels(compile_kernels(tmp_path_factory.mktemp("kernels")))


@pytest.fixture(scope="module")
def kernels_omp(tmp_path_factory: pytest.TempPathFactory) -> Kernels:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "2")  # read when libgomp loads, with the library
        return Kernels(compile_kernels(tmp_path_factory.mktemp("kernels_omp"), openmp=True))


def force(kernels: Kernels, isa: str) -> None:
    assert kernels.has(isa), f"this CPU lacks {isa}: the test of that path cannot run here"
    assert kernels.set_isa(isa) > 0 and kernels.isa() == isa


def case(shape: tuple, density: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    c, h, w, n, groups, (kh, kw), _, _, _, batch = shape
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((n, c // groups, kh, kw)).astype(np.float32)
    weights[rng.random(weights.shape) >= density] = 0
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    return weights, x


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = np.max(np.abs(want))
    return float(np.max(np.abs(got.astype(np.float64) - want)) / scale) if scale else float(np.max(np.abs(got)))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", SHAPES)
def test_convolution(kernels: Kernels, isa: str, name: str):
    force(kernels, isa)
    c, h, w, n, groups, k, stride, dilation, pad, batch = SHAPES[name]
    for i, density in enumerate(DENSITIES):
        weights, x = case(SHAPES[name], density, i)
        exact = kernels.conv(weights, x, groups, stride, dilation, pad, EXACT)
        want = reference_conv(weights, x, groups, stride, dilation, pad, ordered=True)
        assert exact.shape == want.shape
        assert exact.tobytes() == want.tobytes(), (
            f"{isa} {name} density {density}: EXACT differs by {np.max(np.abs(exact - want))}")
        fast = kernels.conv(weights, x, groups, stride, dilation, pad, FAST)
        error = relative_error(fast, reference_conv(weights, x, groups, stride, dilation, pad, ordered=False))
        assert error <= RTOL, f"{isa} {name} density {density}: FAST off by {error:.3g}"
        if density:
            assert np.ptp(want) > 0, "a vacuous comparison"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", ["linear", "leaky", "relu"])
def test_fused_epilogue(kernels: Kernels, isa: str, act: str):
    """FAST stores act(sum*scale + bias) per filter, as Darknet's folded
    batch norm, bias and activation would give."""
    force(kernels, isa)
    shape = SHAPES["groups_stride_y2"]
    c, h, w, n, groups, k, stride, dilation, pad, batch = shape
    weights, x = case(shape, 0.3, 7)
    rng = np.random.default_rng(8)
    scale, bias = rng.uniform(0.5, 2, n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    got = kernels.conv(weights, x, groups, stride, dilation, pad, FAST, epilogue=(scale, bias, act))
    want = reference_conv(weights, x, groups, stride, dilation, pad, ordered=False)
    want = want * scale[None, :, None, None] + bias[None, :, None, None]
    want = {"linear": want, "leaky": np.where(want > 0, want, 0.1 * want), "relu": np.maximum(want, 0)}[act]
    assert relative_error(got, want) <= RTOL
    assert (got < 0).any() == (act != "relu")


def test_exact_refuses_an_epilogue_and_a_wrong_geometry(kernels: Kernels):
    weights, x = case(SHAPES["3x3_pad1"], 0.5, 1)
    n = weights.shape[0]
    with pytest.raises(AssertionError, match="refused"):
        kernels.conv(weights, x, 1, (1, 1), 1, 1, EXACT, epilogue=(np.ones(n), np.zeros(n), "linear"))
    built = kernels.lib.ds_sparse_build_conv(weights.ravel(), n, 1, 5, 3, 3, FAST)
    out = np.zeros(n * 11 * 17, np.float32)
    try:
        for c, filters, kh in ((5, n, 3), (4, n, 3), (5, n + 1, 3), (5, n, 1)):
            geom = Geom(1, c, 11, 17, filters, 1, kh, 3, 1, 1, 1, 1, 11, 17)
            rc = kernels.lib.ds_sparse_conv_forward(built, ctypes.byref(geom), np.zeros(c * 11 * 17, np.float32),
                                                    out, None)
            assert rc == (0 if (c, filters, kh) == (5, n, 3) else -1)
    finally:
        kernels.lib.ds_sparse_free(built)


def lane_sums(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """gcc -Ofast's sums of pjreddie's gemm_nt (see connected_total in
    sparse_kernels.c), in float32, all products included."""
    inputs = weights.shape[1]
    k4 = inputs & ~3
    out = np.empty((x.shape[0], weights.shape[0]), np.float32)
    for b in range(x.shape[0]):
        v = np.zeros((4, weights.shape[0]), np.float32)
        for k in range(k4):
            v[k % 4] = v[k % 4] + weights[:, k] * x[b, k]
        h0, h1 = v[0] + v[2], v[1] + v[3]
        tail = [weights[:, k] * x[b, k] for k in range(k4, inputs)]
        if len(tail) == 0:
            total = h0 + h1
        elif len(tail) == 1:
            total = (h0 + h1) + tail[0]
        else:
            total = (h0 + tail[0]) + (h1 + tail[1])
            if len(tail) == 3:
                total = total + tail[2]
        out[b] = total
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("inputs", [300, 301, 302, 303, 3])
def test_connected(kernels: Kernels, isa: str, inputs: int):
    force(kernels, isa)
    rng = np.random.default_rng(inputs)
    for density in DENSITIES:
        weights = rng.standard_normal((37, inputs)).astype(np.float32)
        weights[rng.random(weights.shape) >= density] = 0
        x = rng.standard_normal((2, inputs)).astype(np.float32)
        start = rng.standard_normal((2, 37)).astype(np.float32)
        exact = kernels.connected(weights, x, EXACT, accumulate=np.zeros((2, 37)))
        assert exact.tobytes() == (lane_sums(weights, x) + np.float32(0)).tobytes()
        want = x.astype(np.float64) @ weights.T.astype(np.float64)
        assert relative_error(kernels.connected(weights, x, FAST), want) <= RTOL
        added = kernels.connected(weights, x, FAST, accumulate=start)
        assert relative_error(added, want + start) <= RTOL


@pytest.mark.parametrize("isa", ISAS)
def test_environment_forces_the_path(kernels: Kernels, isa: str):
    """DS_SPARSE_ISA picks the path on first use (a fresh process)."""
    assert kernels.has(isa), f"this CPU lacks {isa}"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from helpers.kernels import Kernels; print(Kernels(Path(sys.argv[2])).isa())")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(kernels.path)],
                          env={**os.environ, "DS_SPARSE_ISA": isa}, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == isa


@pytest.mark.parametrize("isa", ISAS)
def test_openmp_build_at_two_threads(kernels_omp: Kernels, isa: str):
    """Threads share tiles and filters: EXACT still equals the ordered
    reference (each sum made by one thread, in k order), FAST within RTOL.
    Few tiles (13x13) make the kernels split the filters too."""
    force(kernels_omp, isa)
    shape = (32, 13, 13, 64, 2, (3, 3), (1, 1), 1, 1, 1)
    weights, x = case(shape, 0.3, 5)
    _, _, _, _, groups, _, stride, dilation, pad, _ = shape
    want = reference_conv(weights, x, groups, stride, dilation, pad, ordered=True)
    assert kernels_omp.conv(weights, x, groups, stride, dilation, pad, EXACT).tobytes() == want.tobytes()
    fast = kernels_omp.conv(weights, x, groups, stride, dilation, pad, FAST)
    assert relative_error(fast, reference_conv(weights, x, groups, stride, dilation, pad, ordered=False)) <= RTOL


def test_the_mode_switches_on_a_built_format(kernels: Kernels):
    """ds_sparse_set_mode: one build serves FAST at inference and EXACT in
    training forwards (patches/0010), for convolutions and connected layers."""
    force(kernels, "avx512")
    lib = kernels.lib
    lib.ds_sparse_set_mode.argtypes = [ctypes.c_void_p, ctypes.c_int]
    weights, x = case(SHAPES["groups_stride_y2"], 0.5, 3)
    n, cg, kh, kw = weights.shape
    batch, c, h, w = x.shape
    want = reference_conv(weights, x, 2, (2, 1), 1, 1, ordered=True)
    built = lib.ds_sparse_build_conv(weights.ravel(), n, 2, c, kh, kw, FAST)
    out = np.zeros(want.size, np.float32)
    try:
        geom = Geom(batch, c, h, w, n, 2, kh, kw, 1, 2, 1, 1, want.shape[2], want.shape[3])
        assert lib.ds_sparse_set_mode(built, EXACT) == 0 and lib.ds_sparse_set_mode(built, 7) == -1
        assert lib.ds_sparse_conv_forward(built, ctypes.byref(geom), x.ravel(), out, None) == 0
        assert out.tobytes() == want.tobytes()
    finally:
        lib.ds_sparse_free(built)
    rng = np.random.default_rng(4)
    dense = rng.standard_normal((9, 303)).astype(np.float32)
    dense[rng.random(dense.shape) < 0.5] = 0
    inputs = rng.standard_normal((1, 303)).astype(np.float32)
    built = lib.ds_sparse_build_connected(dense.ravel(), 9, 303, FAST)
    out = np.zeros(9, np.float32)
    try:
        assert lib.ds_sparse_set_mode(built, EXACT) == 0
        assert lib.ds_sparse_connected_forward(built, 1, inputs.ravel(), out, 1, None) == 0
        assert out.tobytes() == (lane_sums(dense, inputs)[0] + np.float32(0)).tobytes()
    finally:
        lib.ds_sparse_free(built)
