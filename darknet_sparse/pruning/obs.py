"""A layer-wise second-order pruning solver: which weights to drop, and
what the survivors become, from a layer's input Gram matrix alone.

A layer computes ``Y = X W^T`` from its inputs ``X`` (one row per output
pixel: an im2col row).  Removing weights changes the output by
``X dW^T``, whose squared norm is ``sum_rows dw H dw^T`` with ``H = X^T X``.
Optimal Brain Surgeon (Hassibi and Stork, "Second order derivatives for
network pruning: Optimal Brain Surgeon", 1993) says, for one row ``w``:
removing weight ``q`` and moving the others to make up for it at best
costs ``w_q^2 / [H^-1]_qq`` (the *saliency*), and the others move by
``dw = -w_q / [H^-1]_qq * H^-1[q, :]``; after it, ``H^-1`` loses ``q``
by one step of Gaussian elimination.

Done weight by weight and row by row this is exact but slow (``O(d^3)``
per row: Frantar and Alistarh's "Optimal Brain Compression", NeurIPS
2022).  SparseGPT (Frantar and Alistarh, "SparseGPT: Massive Language
Models Can Be Accurately Pruned in One-Shot", ICML 2023) makes it fast:
visit the columns in one order shared by every row and *freeze* each
column once visited (a removed weight stays 0, a kept one keeps its
value), so that only the columns not yet visited make up for it.  Then
the inverse Gram matrix of the columns left, at every step, is read off
one upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``): when
column ``i`` is visited, the columns after it move by
``-(w_i / U_ii) * U[i, i+1:]`` if ``w_i`` is removed, which is the OBS
step above restricted to them.  The columns are visited in blocks (128
here): the updates inside a block are applied at once to the block, and
the block's accumulated effect on every later column is one matrix
product (the lazy batch update), so the work is a few matrix products per
layer instead of one rank-1 update of the whole matrix per column.

The mask is chosen block by block, when the block is reached, by the
saliency ``w^2 / [H_rest^-1]_jj``, ``H_rest`` being ``H`` over the columns
not yet frozen (the column norms of the block's part of ``U``; at the first
block it is exactly ``w^2 / [H^-1]_jj``), the smallest ``k`` of the block
going, where the ``k`` per block add up to exactly the count asked for
(the same share in every block, as SparseGPT does).  With
``per_row=True`` every row loses the same count in each block instead
(an N:M-like balance; the default lets rows differ).

``H`` is dampened by ``damp * mean(diag H)`` on its diagonal before it is
inverted (SparseGPT's 1%), which keeps it invertible when inputs are
collinear or constant; a column that never varies (``H_jj = 0``) gets 1.
Everything here is float64.  The layer's grouped and depthwise
convolutions are solved per group (:func:`prune_groups`), each group with
its own ``H``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import PolicyError

#: Columns per block of the lazy update (and of the mask choice).
BLOCK = 128
#: The default dampening, relative to the mean diagonal of H.
DAMP = 0.01


@dataclass
class Solution:
    """What :func:`prune_rows` made of one weight matrix."""

    weights: np.ndarray  # (rows, columns) float64: the new weights, 0 where masked
    mask: np.ndarray  # (rows, columns) bool: True where a weight was removed
    error: float  # sum over rows of (w' - w) H (w' - w)^T, with the undamped H


def dampened(H: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """``H`` plus ``damp * mean(diag H)`` on the diagonal, and 1 where a
    column never varies (a zero diagonal entry), as float64."""
    H = np.array(H, np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise PolicyError(f"the Gram matrix must be square, not of shape {H.shape}")
    if not damp >= 0:
        raise PolicyError(f"the dampening must be >= 0, not {damp!r}")
    diagonal = np.diag(H).copy()
    dead = diagonal <= 0
    H[dead, :] = 0
    H[:, dead] = 0
    diagonal[dead] = 1.0
    mean = float(np.mean(diagonal[~dead])) if (~dead).any() else 1.0
    H[np.diag_indices_from(H)] = diagonal + damp * mean
    return H


def inverse_factor(H: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``) for a
    symmetric positive definite ``H``, float64: with ``P`` the reversal of
    the columns and ``P H P = L L^T``, ``U = P L^-1 P`` (one Cholesky
    factorisation and one triangular inverse, no inverse of ``H`` itself)."""
    try:
        lower = np.linalg.cholesky(np.ascontiguousarray(np.asarray(H, np.float64)[::-1, ::-1]))
    except np.linalg.LinAlgError:
        raise PolicyError("the dampened Gram matrix is not positive definite: raise the dampening") from None
    return np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])


def _lower_inverse(L: np.ndarray) -> np.ndarray:
    """The inverse of a lower triangular matrix, by halves:
    ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``."""
    n = len(L)
    if n <= 128:
        return np.tril(np.linalg.inv(L))
    h = n // 2
    a, d = _lower_inverse(L[:h, :h]), _lower_inverse(L[h:, h:])
    result = np.zeros_like(L)
    result[:h, :h] = a
    result[h:, h:] = d
    result[h:, :h] = -(d @ (L[h:, :h] @ a))
    return result


def error(W: np.ndarray, W0: np.ndarray, H: np.ndarray) -> float:
    """``sum_rows (w - w0) H (w - w0)^T``: the squared change of the output."""
    delta = np.asarray(W, np.float64) - np.asarray(W0, np.float64)
    return float(np.sum(delta * (delta @ np.asarray(H, np.float64))))


def shares(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` split over parts of ``sizes`` in proportion, whole numbers
    that add up to ``total`` (cumulative rounding)."""
    bounds = np.cumsum([0, *sizes])
    cuts = np.round(total * bounds / max(bounds[-1], 1)).astype(np.int64)
    return list(np.diff(cuts))


def lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """A mask of exactly ``k`` entries of ``scores`` with the smallest
    values (among equal ones, a deterministic choice)."""
    flat = scores.reshape(-1)
    mask = np.zeros(flat.size, bool)
    if k >= flat.size:
        mask[:] = True
    elif k > 0:
        mask[np.argpartition(flat, k - 1)[:k]] = True
    return mask.reshape(scores.shape)


def prune_rows(W: np.ndarray, H: np.ndarray, count: int, *, damp: float = DAMP, block: int = BLOCK,
               per_row: bool = False, order: np.ndarray | None = None) -> Solution:
    """Remove exactly ``count`` weights of ``W`` (rows = outputs, columns =
    inputs) and update the survivors, for inputs whose Gram matrix is ``H``
    (module docstring).  ``order`` is the order the columns are visited in
    (default: as they are).  Weights already 0 are always among those
    removed (``count`` is raised to their number if it is below), so a
    pruned matrix is pruned further, never revived."""
    W0 = np.array(W, np.float64)
    if W0.ndim != 2:
        raise PolicyError(f"the weights must be a matrix, not of shape {W0.shape}")
    rows, columns = W0.shape
    if np.shape(H) != (columns, columns):
        raise PolicyError(f"weights of {columns} columns need a {columns}x{columns} Gram matrix, "
                          f"not {np.shape(H)}")
    if not 0 <= count <= W0.size:
        raise PolicyError(f"cannot remove {count} of {W0.size} weights")
    if block < 1:
        raise PolicyError(f"the block size must be at least 1, not {block}")
    if order is None:
        order = np.arange(columns)
    order = np.asarray(order)
    if sorted(order.tolist()) != list(range(columns)):
        raise PolicyError("the column order must be a permutation of the columns")
    zero = W0 == 0
    count = max(count, int(zero.sum()))
    if count == 0:
        return Solution(W0, np.zeros(W0.shape, bool), 0.0)
    Hd = dampened(H, damp)[np.ix_(order, order)]
    U = inverse_factor(Hd)
    work = W0[:, order].copy()
    zero = zero[:, order]
    mask = np.zeros(work.shape, bool)
    starts = list(range(0, columns, block))
    widths = [min(block, columns - s) for s in starts]
    # How many go from each block (and row): as many as the weights' saliencies
    # alone, every other weight free, place among the `count` lowest.
    alone = np.where(zero, -1.0, work * work / np.sum(U * U, axis=0))
    if per_row:
        per = np.maximum(shares(count, [columns] * rows), zero.sum(1))
        first = np.stack([lowest(row, k) for row, k in zip(alone, per)])
        quotas = np.add.reduceat(first, starts, axis=1)  # (rows, blocks)
    else:
        quotas = np.add.reduceat(lowest(alone, count), starts, axis=1).sum(0)  # (blocks,)
    for b, (start, width) in enumerate(zip(starts, widths)):
        stop = start + width
        part = work[:, start:stop].copy()
        Ub = U[start:stop, start:stop]
        # [H_rest^-1]_jj for the block's columns: the squared norms of U's columns there.
        rest_diagonal = np.sum(Ub * Ub, axis=0)
        saliency = np.where(zero[:, start:stop], -1.0, part * part / rest_diagonal)
        if per_row:
            chosen = np.stack([lowest(saliency[r], int(quotas[r, b])) for r in range(rows)])
        else:
            chosen = lowest(saliency, int(quotas[b]))
        errors = np.zeros((rows, width))
        for j in range(width):
            gone = chosen[:, j]
            if not gone.any():
                continue
            e = np.where(gone, part[:, j] / Ub[j, j], 0.0)
            part[:, j:] -= np.outer(e, Ub[j, j:])
            part[gone, j] = 0.0  # exactly, not up to rounding
            errors[:, j] = e
        mask[:, start:stop] = chosen
        work[:, start:stop] = part
        if stop < columns:
            work[:, stop:] -= errors @ U[start:stop, stop:]
    inverse = np.empty(columns, np.int64)
    inverse[order] = np.arange(columns)
    new, removed = work[:, inverse], mask[:, inverse]
    return Solution(new, removed, error(new, W0, H))


def prune_groups(W: np.ndarray, grams: Sequence[np.ndarray], count: int, **options) -> Solution:
    """:func:`prune_rows` per group of a grouped (or depthwise) convolution:
    ``W`` is (outputs, columns per group), group ``g`` being the rows
    ``g * outputs / groups`` onward, with Gram matrix ``grams[g]``; the
    ``count`` is shared in proportion to the groups' sizes (all equal)."""
    W = np.asarray(W, np.float64)
    groups = len(grams)
    if groups < 1 or len(W) % groups:
        raise PolicyError(f"{len(W)} outputs cannot be split into {groups} groups")
    size = len(W) // groups
    parts = [prune_rows(W[g * size:(g + 1) * size], grams[g], k, **options)
             for g, k in enumerate(shares(count, [size * W.shape[1]] * groups))]
    return Solution(np.concatenate([p.weights for p in parts]), np.concatenate([p.mask for p in parts]),
                    float(sum(p.error for p in parts)))


def magnitude_mask(W: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` smallest ``|w|`` of ``W``: what
    magnitude pruning removes at the same mask size."""
    return lowest(np.abs(np.asarray(W, np.float64)), count)


def saliencies(W: np.ndarray, H: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Each weight's OBS saliency ``w^2 / [H^-1]_jj`` alone (every other
    weight free): what removing just it would cost the output."""
    Hd = dampened(H, damp)
    U = inverse_factor(Hd)
    diagonal = np.sum(U * U, axis=0)
    W = np.asarray(W, np.float64)
    return W * W / diagonal
