"""Commands that analyse a model through the binding: ``sensitivity``,
``plan`` and ``recalibrate``."""
from __future__ import annotations
