"""Commands that drive Darknet: the prune/retrain loop, sensitivity
analysis, per-layer plans, batch-norm recalibration, and the build."""
from __future__ import annotations
