"""Charts of analysis results, drawn with matplotlib (the ``plot`` extra).

matplotlib is imported only when a chart is asked for, with the
non-interactive Agg backend, so nothing here needs a display.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import OutputError
from ..format.weightsfile import atomic_path
from .sensitivity import Sensitivity


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise OutputError("plots need matplotlib: pip install 'darknet-sparse[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def sensitivity(result: Sensitivity, path: str | Path, metric: str | None = None) -> None:
    """One line per layer: the metric against the layer's measured sparsity."""
    metric = metric or result.metrics[0]
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    try:
        for layer in result.layers:
            rows = sorted((r for r in result.rows if r.layer == layer), key=lambda r: r.level)
            axes.plot([r.sparsity for r in rows], [r.metrics[metric] for r in rows], marker="o",
                      label=f"{layer} {rows[0].type} ({rows[0].weights} weights)")
        axes.axhline(result.baseline[metric], color="grey", linestyle=":", label="unpruned")
        axes.set_xlabel("sparsity of the layer (pruned alone)")
        axes.set_ylabel(metric)
        axes.set_title("Sensitivity to pruning, layer by layer")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        with atomic_path(path) as tmp:  # the type from the name, not the temporary file's
            figure.savefig(tmp, dpi=100, format=Path(path).suffix[1:].lower() or "png")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
    except ValueError as exc:  # matplotlib's word for an unknown file type
        raise OutputError(f"{path}: {exc}") from None
    finally:
        plt.close(figure)
