"""Analyses that return data (info, diff) and renderers for text and JSON.

Analysis functions return plain dataclasses; :func:`info_table`,
:func:`diff_table` and :func:`prune_table` lay them out with
:func:`render_table`, the table renderer every text report shares, and
:func:`to_json` writes them as JSON.  Nothing here prints or imports click.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np

from .errors import WeightsFormatError
from .format.forward_path import forward_path, sparse_forward_mode
from .format.layout import PRUNABLE_ROLES
from .format.stats import abs_bits, nonzero
from .format.weightsfile import WeightsFile
from .pruning.prune import PruneResult


def _shape(dims: tuple[int, int, int], values: int) -> str:
    """``WxHxC`` as Darknet prints it; just the value count for layers that
    leave Darknet's dims unset (softmax, cost, ...)."""
    c, h, w = dims
    return f"{w}x{h}x{c}" if c or h or w else str(values)


@dataclass
class InfoRow:
    """One layer of ``info``: shapes, sizes, sparsity and FLOPs."""

    index: int
    type: str
    input: str
    output: str
    params: int
    weights: int
    nonzero: int
    bflops: float
    effective_bflops: float
    path: str = ""

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.weights if self.weights else 0.0


@dataclass
class Info:
    """The whole ``info`` report."""

    weights: str
    cfg: str
    fork: str
    header: str
    seen: int
    rows: list[InfoRow]
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        weights = sum(r.weights for r in self.rows)
        nonzero_ = sum(r.nonzero for r in self.rows)
        return {"params": sum(r.params for r in self.rows), "weights": weights, "nonzero": nonzero_,
                "sparsity": 1 - nonzero_ / weights if weights else 0.0,
                "bflops": sum(r.bflops for r in self.rows),
                "effective_bflops": sum(r.effective_bflops for r in self.rows)}


def info(wf: WeightsFile) -> Info:
    """Per-layer report of a weights file.  For pjreddie models, ``path`` is
    the CPU forward path the patched Darknet takes for each conv/connected
    layer (:mod:`forward_path`)."""
    model = wf.model
    mode = sparse_forward_mode(model.net) if model.fork == "pjreddie" else None
    rows = []
    counted: dict[tuple[int, str], int] = {}  # non-zeros per stored weights array
    for layer in model.layers:
        present = layer.index < wf.layers_present
        weights = nonzero_ = macs = 0
        for slot in wf.slots_of(layer.index) if present else []:
            if slot.param.role in PRUNABLE_ROLES:
                count = counted[slot.key] = nonzero(wf, slot)
                weights += slot.param.count
                nonzero_ += count
                macs += count * slot.param.macs
        for param in layer.borrowed if present else ():  # a shared layer computes with its source's zeros
            if param.role in PRUNABLE_ROLES:
                macs += counted.get((layer.shares, param.name), param.count) * param.macs
        dense = layer.flops
        effective = 2 * macs
        section = layer.section
        path = mode and weights and forward_path(layer.type, nonzero_, weights, mode,
                                                 bool(section.get_int("xnor", 0) or section.get_int("binary", 0)))
        inputs = model.layers[layer.index - 1].outputs if layer.index else model.net.get_int("inputs", 0) or 0
        rows.append(InfoRow(layer.index, layer.type, _shape(layer.input, inputs), _shape(layer.output, layer.outputs),
                            layer.param_count, weights, nonzero_, dense / 1e9, effective / 1e9,
                            path or ""))
    notes = list(model.notes)
    if wf.partial:
        notes.append(f"partial file: holds layers 0..{wf.layers_present - 1} of {len(model.layers)}")
    if wf.trailing:
        notes.append(f"{wf.trailing} trailing bytes after the last layer")
    h = wf.header
    return Info(str(wf.path), model.path, model.fork, f"{h.major}.{h.minor}.{h.revision}", h.seen, rows, notes)


@dataclass
class DiffRow:
    """How one array changed between two files."""

    layer: int
    type: str
    name: str
    count: int
    changed: int = 0
    zeros_added: int = 0
    zeros_revived: int = 0
    max_abs_change: float = 0.0


@dataclass
class Diff:
    a: str
    b: str
    fork: str
    rows: list[DiffRow]

    @property
    def revived(self) -> int:
        return sum(r.zeros_revived for r in self.rows)

    @property
    def totals(self) -> dict:
        return {key: sum(getattr(r, key) for r in self.rows)
                for key in ("count", "changed", "zeros_added", "zeros_revived")}


def diff(a: WeightsFile, b: WeightsFile, all_arrays: bool = False) -> Diff:
    """Compare two files of the same cfg array by array (weights only unless
    ``all_arrays``)."""
    if [s.offset for s in a.slots] != [s.offset for s in b.slots] or a.size - a.trailing != b.size - b.trailing:
        raise WeightsFormatError(f"{a.path} and {b.path} do not hold the same layers "
                                 f"({a.size} vs {b.size} bytes)")
    rows = []
    for slot_a, slot_b in zip(a.slots, b.slots):
        if not all_arrays and slot_a.param.role not in PRUNABLE_ROLES:
            continue
        row = DiffRow(slot_a.layer.index, slot_a.layer.type, slot_a.param.name, slot_a.param.count)
        for x, y in zip(a.chunks(slot_a), _copies(b.chunks(slot_b))):
            changed = x.view(np.uint32) != y.view(np.uint32)
            zero_x, zero_y = abs_bits(x) == 0, abs_bits(y) == 0
            row.changed += int(np.count_nonzero(changed))
            row.zeros_added += int(np.count_nonzero(zero_y & ~zero_x))
            row.zeros_revived += int(np.count_nonzero(zero_x & ~zero_y))
            if changed.any():
                with np.errstate(invalid="ignore", over="ignore"):
                    row.max_abs_change = max(row.max_abs_change,
                                             float(np.nanmax(np.abs(x[changed].astype(np.float64) - y[changed]))))
        rows.append(row)
    return Diff(str(a.path), str(b.path), a.model.fork, rows)


def _copies(pieces):
    """Both files are read through one reused buffer each; copy one side."""
    for piece in pieces:
        yield piece.copy()


# --------------------------------------------------------------------------
# Rendering.


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """Rows under headers in columns two spaces apart, each as wide as its
    widest cell; the one table layout of every text report.

    Cells are shown with ``str`` (``None`` as an empty cell), so format
    numbers before passing them.  ``align`` has one character per column,
    ``<`` (left) or ``>`` (right); columns it does not cover are right-aligned.
    Trailing blanks are trimmed from every line.
    """
    table = [list(headers)] + [["" if cell is None else str(cell) for cell in row] for row in rows]
    if any(len(row) != len(headers) for row in table):
        raise ValueError(f"every row needs {len(headers)} cells")
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    sides = align.ljust(len(headers), ">")
    return "\n".join("  ".join(cell.ljust(width) if side == "<" else cell.rjust(width)
                               for cell, width, side in zip(row, widths, sides)).rstrip()
                     for row in table)


def _bflops(value: float) -> str:
    """Darknet's 3 decimals, or 3 significant digits for small layers."""
    return f"{value:.3f}" if value >= 0.1 or value == 0 else f"{value:.3g}"


def info_table(report: Info) -> str:
    show_path = any(r.path for r in report.rows)
    headers = ["layer", "type", "input", "output", "params", "non-zero", "sparsity", "BFLOPs", "eff.BFLOPs"]
    headers += ["path"] if show_path else []
    rows = []
    for r in report.rows:
        row = [str(r.index), r.type, r.input, "->" + r.output, f"{r.params:,}",
               f"{r.nonzero:,}" if r.weights else "", f"{100 * r.sparsity:.1f}%" if r.weights else "",
               _bflops(r.bflops) if r.bflops else "", _bflops(r.effective_bflops) if r.bflops else ""]
        rows.append(row + ([r.path] if show_path else []))
    t = report.totals
    rows.append(["total", "", "", "", f"{t['params']:,}", f"{t['nonzero']:,}", f"{100 * t['sparsity']:.1f}%",
                 _bflops(t["bflops"]), _bflops(t["effective_bflops"])] + ([""] if show_path else []))
    head = [f"{report.weights}: cfg {report.cfg}, fork {report.fork}, header {report.header}, seen {report.seen}"]
    ratio = t["bflops"] / t["effective_bflops"] if t["effective_bflops"] else float("inf")
    tail = [f"weights {t['weights']:,}, non-zero {t['nonzero']:,} ({100 * t['sparsity']:.2f}% sparse, "
            f"{t['weights'] / max(t['nonzero'], 1):.2f}x fewer); FLOPs {ratio:.2f}x fewer"]
    return "\n".join(head + [render_table(headers, rows)] + tail + [f"note: {n}" for n in report.notes])


def prune_table(result: PruneResult) -> str:
    headers = ["layer", "type", "array", "weights", "threshold", "zeros before", "zeros after", "sparsity", "level"]
    rows = [[str(a.layer), a.type, a.name, f"{a.count:,}",
             "" if a.threshold is None else f"{a.threshold:.6g}", f"{a.zeros_before:,}", f"{a.zeros_after:,}",
             f"{100 * a.sparsity:.1f}%", a.level] for a in result.arrays]
    rows.append(["total", "", "", f"{result.count:,}", "", f"{result.zeros_before:,}", f"{result.zeros_after:,}",
                 f"{100 * result.sparsity:.1f}%", ""])
    where = "dry run, nothing written" if result.output is None else f"wrote {result.output}"
    head = [f"{result.source}: mode {result.mode}, fork {result.fork}; {where}"]
    return "\n".join(head + [render_table(headers, rows)] + [f"note: {n}" for n in result.notes])


def diff_table(report: Diff) -> str:
    headers = ["layer", "type", "array", "weights", "changed", "zeros added", "zeros revived", "max |change|"]
    rows = [[str(r.layer), r.type, r.name, f"{r.count:,}", f"{r.changed:,}", f"{r.zeros_added:,}",
             f"{r.zeros_revived:,}", f"{r.max_abs_change:.6g}"] for r in report.rows]
    t = report.totals
    rows.append(["total", "", "", f"{t['count']:,}", f"{t['changed']:,}", f"{t['zeros_added']:,}",
                 f"{t['zeros_revived']:,}", ""])
    return "\n".join([f"{report.a} -> {report.b} (fork {report.fork})", render_table(headers, rows)])


def to_json(report, **extra) -> str:
    """Any report dataclass as JSON, with its totals (and the fields of
    ``extra``, such as which fork ran the model)."""
    def plain(value):
        if is_dataclass(value):
            data = {f.name: plain(getattr(value, f.name)) for f in fields(value)}
            for extra in ("totals", "sparsity"):
                if hasattr(type(value), extra):
                    data[extra] = plain(getattr(value, extra))
            return data
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    if isinstance(report, PruneResult):
        data = plain(report)
        data.update(count=report.count, zeros_before=report.zeros_before, zeros_after=report.zeros_after,
                    nonfinite=report.nonfinite)
        data["arrays"] = [dict(plain(a), sparsity=a.sparsity) for a in report.arrays]
        return json.dumps(data, indent=2)
    return json.dumps({**plain(report), **extra}, indent=2)
