"""The sparse forward pass of AlexeyAB's Darknet ([net] sparse_forward=,
patches/alexeyab/0003-sparse-forward.patch) against the stock build.

For yolov4-tiny, yolov7-tiny, efficientnet_b0 (grouped and depthwise
convolutions) and tests/data/ab/ab_geometry.cfg (dilation 2 and 3,
stride_x != stride_y, groups, depthwise, 1x1 stride 2, connected layers), with
the fork's own initial weights pruned to 0%, 50% and 90% (magnitude), one
inference forward pass of the same seeded input (``ab_tool forward``, batch
norm fused as `detector test` runs; unfused too for the geometry cfg) in each
build; every layer's output is compared:

- dense, and exact: bit-identical to stock (the EXACT kernels sum each
  product in the k order of the fork's GEMM, never FMA: the fork's AVX GEMM
  does the same, compiled without -mfma); connected layers in exact mode
  within the bound below (stock's gemm_nt sums in vector lanes);
- sparse and auto: within 1e-5 relative in the max norm, per layer:
  max|patched - stock| <= 1e-5 * max|stock| over the layer's whole output
  (FMA and another summation order: float rounding, not equality).

DS_SPARSE_FORWARD_TRACE shows which path each layer took: the test checks that
sparse and exact ran the kernels on every layer, and auto on every convolution
(this CPU has vector kernels) and on the connected layers at most 30% non-zero.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.ab_darknet import CFGS, PATCHED_OMP, REPO, compile_tool, edit_cfg, read_forward, run, with_role_set
from helpers.ab_fixtures import ab  # noqa: F401

GEOMETRY = REPO / "tests" / "data" / "ab" / "ab_geometry.cfg"
CFG_LIST = [CFGS / "yolov4-tiny.cfg", CFGS / "yolov7-tiny.cfg", CFGS / "efficientnet_b0.cfg", GEOMETRY]
SPARSITIES = [0.0, 0.5, 0.9]
#: Whether this CPU has the kernels' vector paths (AVX2 with FMA, or AVX-512F).
_FLAGS = set(next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("flags")), []))
VECTOR = {"avx2", "fma"} <= _FLAGS or "avx512f" in _FLAGS
BOUND = 1e-5
CONNECTED = 2  # AlexeyAB's LAYER_TYPE of [connected]


@pytest.fixture(scope="module", params=CFG_LIST, ids=lambda p: p.stem)
def model(request, ab, tmp_path_factory):  # noqa: F811
    cfg = request.param
    folder = tmp_path_factory.mktemp(f"ab_forward_{cfg.stem}")
    local = folder / cfg.name
    local.write_text(cfg.read_text())
    init = folder / "init.weights"
    run([ab.stock_tool, "init", local, init], folder, env={"AB_TOOL_TIME": "1000"})
    dense = with_role_set(local, init, folder / "dense.weights", "rolling_variance", 1.0)
    files = {0.0: dense}
    for s in SPARSITIES[1:]:
        out = folder / f"pruned{s}.weights"
        done = subprocess.run([sys.executable, "-m", "darknet_sparse", "threshold", "--fork", "alexeyab", "--mode",
                               "magnitude", "-s", str(s), "--cfg", str(local), str(dense), "-o", str(out)],
                              capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, done.stderr
        files[s] = out
    return folder, local, files


def forward(tool: Path, folder: Path, cfg: Path, weights: Path, name: str, fuse: bool = True,
            trace: bool = False) -> tuple[dict, str]:
    out = folder / f"{name}.out"
    done = run([tool, "forward", cfg, weights, "3", out] + (["fuse"] if fuse else []), folder,
               env={"DS_SPARSE_FORWARD_TRACE": "1"} if trace else None)
    return read_forward(out), done.stderr


def mode_cfg(folder: Path, cfg: Path, mode: str) -> Path:
    path = folder / f"{cfg.stem}.{mode}.cfg"
    path.write_text(edit_cfg(cfg.read_text(), {"sparse_forward": mode}))
    return path


def max_relative(a: np.ndarray, b: np.ndarray) -> float:
    assert np.isfinite(b).all()
    scale = float(np.abs(b).max())
    return float(np.abs(a - b).max()) / scale if scale > 0 else float(np.abs(a).max())


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sparse_forward_matches_stock(ab, model, sparsity):  # noqa: F811
    folder, cfg, files = model
    weights = files[sparsity]
    stock, _ = forward(ab.stock_tool, folder, cfg, weights, f"stock{sparsity}")
    fused_cases = [True, False] if cfg.name == GEOMETRY.name else [True]
    for fuse in fused_cases:
        if not fuse:
            stock, _ = forward(ab.stock_tool, folder, cfg, weights, f"stock{sparsity}u", fuse=False)
        for mode in ("dense", "exact", "sparse", "auto"):
            got, trace = forward(ab.patched_tool, folder, mode_cfg(folder, cfg, mode), weights,
                                 f"{mode}{sparsity}{fuse}", fuse=fuse, trace=True)
            assert got.keys() == stock.keys()
            lines = [line.split(": ") for line in trace.splitlines() if line.startswith("ds_sparse_forward:")]
            paths = [parts[-1].split(" ")[0] for parts in lines]
            if mode == "dense":
                assert paths == []
            elif mode in ("exact", "sparse"):
                assert paths and set(paths) == {mode}, trace
            else:
                # auto: every convolution sparse on a CPU whose kernels have vectors (this
                # one's: VECTOR), a connected layer where at most 30% is non-zero
                assert VECTOR, "this test expects a CPU with AVX2+FMA or AVX-512"
                for parts, path in zip(lines, paths):
                    kind = parts[1].split(" ")[0]
                    want = "sparse" if kind == "convolutional" or sparsity == 0.9 else "dense"
                    assert path == want, (kind, sparsity, trace)
            differs = 0
            for index, (kind, values) in stock.items():
                mine = got[index][1]
                if mode == "dense" or (mode == "exact" and kind != CONNECTED):
                    assert np.array_equal(mine, values), (mode, fuse, index)
                else:
                    assert max_relative(mine, values) <= BOUND, (mode, fuse, index, max_relative(mine, values))
                    differs += not np.array_equal(mine, values)
            if mode == "sparse":
                assert differs > 0  # FMA: the kernels ran, and are not stock's arithmetic


def test_new_weights_in_the_same_net_are_seen(ab, model):  # noqa: F811
    """The compressed copy follows the weights: 90% loaded and run, then 50%
    loaded over them in the same net (no call made in between); the second
    forward is stock's on the 50% file, for every mode."""
    folder, cfg, files = model
    stock, _ = forward(ab.stock_tool, folder, cfg, files[0.5], "stock0.5u", fuse=False)
    for mode in ("exact", "sparse", "auto"):
        out = folder / f"second-{mode}.out"
        run([ab.patched_tool, "forward2", mode_cfg(folder, cfg, mode), files[0.9], files[0.5], "3", out], folder)
        got = read_forward(out)
        for index, (kind, values) in stock.items():
            assert max_relative(got[index][1], values) <= BOUND, (mode, index)


@pytest.fixture(scope="session")
def omp_tool(tmp_path_factory):
    return compile_tool(PATCHED_OMP, tmp_path_factory.mktemp("ab_omp") / "ab_tool_omp")


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_change_nothing(ab, model, omp_tool, threads):  # noqa: F811
    """The OPENMP=1 build at 2 and 3 threads, 90% and 50%: exact bit-identical
    to that build's own GEMM (sparse_forward=dense, the fork's OpenMP code:
    its activations and heads differ from the one-thread build's in the last
    bit), sparse and auto within the bound of it and of one-thread stock."""
    folder, cfg, files = model
    for sparsity in (0.9, 0.5):
        stock, _ = forward(ab.stock_tool, folder, cfg, files[sparsity], f"stock{sparsity}")
        outputs = {}
        for mode in ("dense", "exact", "sparse", "auto"):
            out = folder / f"omp-{mode}-{threads}-{sparsity}.out"
            run([omp_tool, "forward", mode_cfg(folder, cfg, mode), files[sparsity], "3", out, "fuse"], folder,
                env={"OMP_NUM_THREADS": str(threads)})
            outputs[mode] = read_forward(out)
        dense = outputs["dense"]
        for mode in ("exact", "sparse", "auto"):
            got = outputs[mode]
            for index, (kind, values) in dense.items():
                if mode == "exact" and kind != CONNECTED:
                    assert np.array_equal(got[index][1], values), (mode, threads, index)
                else:
                    assert max_relative(got[index][1], values) <= BOUND, (mode, threads, index)
                assert max_relative(got[index][1], stock[index][1]) <= BOUND, (mode, threads, index)
