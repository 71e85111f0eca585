"""The GPU side of the AlexeyAB patches compiles with GPU=1 (no GPU here).

Each file the patches add or change is compiled with the fork's own rules and
GPU=1 flags (gcc -DGPU for the .c files, nvcc for network_kernels.cu, whose
update_network_gpu calls the prune hook) from the patched tree's sources.
This machine's CUDA has no cuBLAS or cuRAND headers: the two types darknet.h
and dark_cuda.h name come from stand-ins, so only compiling is checked, not
linking (libcublas is not here either).  The objects must define and call
the GPU hooks: ds_prune_freeze_gpu (which masks with the fork's own
mask_gpu_new_api) from update_network_gpu, and the threshold's pull/push.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.ab_darknet import PATCHED, require

ARCH = "-gencode arch=compute_90,code=sm_90"
FILES = ["ds_prune", "ds_threshold", "ds_sparse_forward", "ds_slim", "ds_distill", "network", "parser", "convolutional_layer",
         "connected_layer", "network_kernels",
         # 0006-seed
         "ds_seed", "data", "detector", "classifier", "yolo_layer", "region_layer", "detection_layer", "gaussian_yolo_layer"]


def symbols(path: Path) -> str:
    return subprocess.run(["nm", str(path)], check=True, capture_output=True, text=True).stdout


def test_gpu_code_compiles(tmp_path: Path):
    require(PATCHED)
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "curand.h").write_text("/* stand-in: no cuRAND type is named where it matters here */\n#pragma once\n")
    (stub / "cublas_v2.h").write_text("/* stand-in: the cuBLAS names darknet.h and dark_cuda.h use */\n#pragma once\n"
                                      "typedef struct cublasContext *cublasHandle_t;\n"
                                      "typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;\n")
    obj = tmp_path / "obj"
    obj.mkdir()
    env = {"PATH": "/usr/local/cuda/bin:/usr/local/bin:/usr/bin:/bin", "CPATH": f"{stub}:/usr/local/cuda/include"}
    for name in FILES:
        done = subprocess.run(["make", "-s", "-C", str(PATCHED), "GPU=1", "AVX=1", "LIBSO=1", f"ARCH={ARCH}",
                               f"OBJDIR={obj}/", f"{obj}/{name}.o"], capture_output=True, text=True, env=env)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    prune, kernels, threshold = symbols(obj / "ds_prune.o"), symbols(obj / "network_kernels.o"), \
        symbols(obj / "ds_threshold.o")
    assert " T ds_prune_freeze_gpu" in prune and " U mask_gpu_new_api" in prune
    assert " U ds_prune_freeze_gpu" in kernels
    assert " U pull_convolutional_layer" in threshold and " U push_convolutional_layer" in threshold
    slim = symbols(obj / "ds_slim.o")
    assert " T ds_slim_step_gpu" in slim and " U cuda_push_array" in slim and " U ds_slim_step_gpu" in kernels
    distill = symbols(obj / "ds_distill.o")  # the teacher's deltas: heads through the host
    assert " T ds_distill_step" in distill and " U cuda_pull_array" in distill and " U cuda_push_array" in distill
    assert " U ds_distill_step" in kernels and " U ds_distill_step" in symbols(obj / "network.o")
