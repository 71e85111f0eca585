"""``patches/kernels/sparse_kernels.c`` compiled on its own into a shared
library and called through ctypes, with a naive numpy reference, for
``tests/test_kernels.py`` (shapes pjreddie's Darknet cannot express:
dilation, stride_x != stride_y, non-square kernels)."""
from __future__ import annotations

import ctypes
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "patches" / "kernels" / "sparse_kernels.c"
EXACT, FAST = 0, 1
ISAS = {"auto": 0, "generic": 1, "avx2": 2, "avx512": 3}
ACTS = {"linear": 0, "leaky": 1, "relu": 2}


class Geom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("batch", "c", "h", "w", "n", "groups", "kh", "kw", "stride_x", "stride_y", "dilation", "pad",
                 "out_h", "out_w")]


class Epilogue(ctypes.Structure):
    _fields_ = [("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("act", ctypes.c_int)]


_FLOATS = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")


def compile_kernels(folder: Path, openmp: bool = False) -> Path:
    """The library, compiled with Darknet's -Ofast plus the flags the file
    needs.  It is linked without -Ofast: gcc 12 links crtfastmath.o into a
    -Ofast shared object, whose constructor turns on flush-to-zero for the
    whole process that loads it (later tests' numpy would lose subnormals)."""
    target = folder / f"libsparse_kernels{'-omp' if openmp else ''}.so"
    omp = ["-fopenmp"] if openmp else []
    objects = target.with_suffix(".o")
    commands = [["gcc", "-Ofast", "-fno-associative-math", "-ffp-contract=off", "-Wall", "-Werror",
                 "-Wno-unknown-pragmas", "-fPIC", *omp, "-c", "-o", str(objects), str(SOURCE)],
                ["gcc", "-shared", *omp, "-o", str(target), str(objects)]]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"cannot build the kernels ({' '.join(command)}):\n{done.stderr}")
    return target


@dataclass
class Kernels:
    """The library's functions (see sparse_kernels.h)."""

    path: Path

    def __post_init__(self) -> None:
        lib = self.lib = ctypes.CDLL(str(self.path))
        lib.ds_sparse_build_conv.restype = ctypes.c_void_p
        lib.ds_sparse_build_conv.argtypes = [_FLOATS, *[ctypes.c_int] * 6]
        lib.ds_sparse_build_connected.restype = ctypes.c_void_p
        lib.ds_sparse_build_connected.argtypes = [_FLOATS, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.ds_sparse_free.argtypes = [ctypes.c_void_p]
        lib.ds_sparse_nonzero.restype = ctypes.c_size_t
        lib.ds_sparse_nonzero.argtypes = [ctypes.c_void_p]
        lib.ds_sparse_conv_forward.argtypes = [ctypes.c_void_p, ctypes.POINTER(Geom), _FLOATS, _FLOATS,
                                               ctypes.POINTER(Epilogue)]
        lib.ds_sparse_connected_forward.argtypes = [ctypes.c_void_p, ctypes.c_int, _FLOATS, _FLOATS, ctypes.c_int,
                                                    ctypes.POINTER(Epilogue)]
        lib.ds_sparse_set_isa.argtypes = [ctypes.c_int]
        lib.ds_sparse_cpu_has.argtypes = [ctypes.c_int]
        lib.ds_sparse_isa_name.restype = ctypes.c_char_p
        lib.ds_sparse_isa_name.argtypes = [ctypes.c_int]

    def set_isa(self, name: str) -> int:
        return self.lib.ds_sparse_set_isa(ISAS[name])

    def isa(self) -> str:
        return self.lib.ds_sparse_isa_name(self.lib.ds_sparse_isa()).decode()

    def has(self, name: str) -> bool:
        return bool(self.lib.ds_sparse_cpu_has(ISAS[name]))

    def conv(self, weights: np.ndarray, x: np.ndarray, groups: int, stride: tuple[int, int], dilation: int,
             pad: int, mode: int, epilogue: tuple | None = None, repeat: int = 1) -> np.ndarray:
        """x (batch, c, h, w), weights (n, c/groups, kh, kw) -> (batch, n, out_h, out_w);
        stride is (stride_y, stride_x)."""
        batch, c, h, w = x.shape
        n, _, kh, kw = weights.shape
        out_h, out_w = out_size(h, kh, stride[0], dilation, pad), out_size(w, kw, stride[1], dilation, pad)
        weights = np.ascontiguousarray(weights, np.float32)
        s = self.lib.ds_sparse_build_conv(weights.ravel(), n, groups, c, kh, kw, mode)
        assert s, "ds_sparse_build_conv failed"
        try:
            geom = Geom(batch, c, h, w, n, groups, kh, kw, stride[1], stride[0], dilation, pad, out_h, out_w)
            out = np.full((batch, n, out_h, out_w), np.nan, np.float32)
            epi, keep = _epilogue(epilogue)
            for _ in range(repeat):
                rc = self.lib.ds_sparse_conv_forward(s, ctypes.byref(geom), np.ascontiguousarray(x, np.float32).ravel(),
                                                     out.reshape(-1), epi)
                assert rc == 0, "ds_sparse_conv_forward refused the geometry"
            del keep
            return out
        finally:
            self.lib.ds_sparse_free(s)

    def connected(self, weights: np.ndarray, x: np.ndarray, mode: int, accumulate: np.ndarray | None = None,
                  epilogue: tuple | None = None) -> np.ndarray:
        outputs, inputs = weights.shape
        s = self.lib.ds_sparse_build_connected(np.ascontiguousarray(weights, np.float32).ravel(), outputs, inputs,
                                               mode)
        assert s
        try:
            out = (np.array(accumulate, np.float32) if accumulate is not None
                   else np.full((x.shape[0], outputs), np.nan, np.float32))
            epi, keep = _epilogue(epilogue)
            rc = self.lib.ds_sparse_connected_forward(s, x.shape[0], np.ascontiguousarray(x, np.float32).ravel(),
                                                      out.reshape(-1), int(accumulate is not None), epi)
            del keep
            assert rc == 0
            return out
        finally:
            self.lib.ds_sparse_free(s)


def _epilogue(spec: tuple | None):
    if spec is None:
        return None, None
    scale, bias, act = spec
    scale, bias = np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(bias, np.float32)
    return ctypes.pointer(Epilogue(scale.ctypes.data, bias.ctypes.data, ACTS[act])), (scale, bias)


def out_size(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
    return (size + 2 * pad - (k - 1) * dilation - 1) // stride + 1


def im2col(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], dilation: int, pad: int) -> np.ndarray:
    """(c, h, w) -> (c*kh*kw, out_h*out_w), rows in Darknet's k order, zeros outside."""
    c, h, w = x.shape
    out_h, out_w = out_size(h, kh, stride[0], dilation, pad), out_size(w, kw, stride[1], dilation, pad)
    padded = np.zeros((c, h + 2 * pad + kh * dilation + out_h * stride[0],
                       w + 2 * pad + kw * dilation + out_w * stride[1]), x.dtype)
    padded[:, pad:pad + h, pad:pad + w] = x
    rows = np.empty((c, kh, kw, out_h, out_w), x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dilation, kx * dilation
            rows[:, ky, kx] = padded[:, y0:y0 + out_h * stride[0]:stride[0], x0:x0 + out_w * stride[1]:stride[1]]
    return rows.reshape(c * kh * kw, out_h * out_w)


def reference_conv(weights: np.ndarray, x: np.ndarray, groups: int, stride: tuple[int, int], dilation: int,
                   pad: int, ordered: bool) -> np.ndarray:
    """ordered: float32, 0 then each product added in k order, one rounding
    per multiply and add (pjreddie's gemm_nn); else a float64 sum."""
    batch, c, h, w = x.shape
    n, cg, kh, kw = weights.shape
    m = n // groups
    out_h, out_w = out_size(h, kh, stride[0], dilation, pad), out_size(w, kw, stride[1], dilation, pad)
    out = np.empty((batch, n, out_h * out_w), np.float32 if ordered else np.float64)
    for b in range(batch):
        for g in range(groups):
            cols = im2col(x[b, g * cg:(g + 1) * cg], kh, kw, stride, dilation, pad)
            a = weights[g * m:(g + 1) * m].reshape(m, -1)
            if ordered:
                acc = np.zeros((m, cols.shape[1]), np.float32)
                for k in range(a.shape[1]):
                    acc = acc + a[:, k:k + 1] * cols[k]
                out[b, g * m:(g + 1) * m] = acc
            else:
                out[b, g * m:(g + 1) * m] = a.astype(np.float64) @ cols.astype(np.float64)
    return out.reshape(batch, n, out_h, out_w)
