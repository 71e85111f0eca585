"""The ``darknet-sparse`` command line: a thin click layer over the API.

Every :class:`DarknetSparseError` a command raises becomes one ``Error:``
line on stderr and exit code 2 (a traceback only with ``--debug``): the
group catches them once for all commands (:class:`Tool`).  Exit code 1 is
an outcome a command reports (``diff --fail-on-revived``, a loop stopped by
its floor).  Only this package imports click; each submodule registers the
commands of one part of the tool.
"""
from __future__ import annotations

from .base import Tool, ToolError, cli

# The submodules register their commands on the group.
from . import analysis, core, evaluate, oneshot, slim, workflow  # noqa: F401  isort: skip

__all__ = ["Tool", "ToolError", "cli", "main"]


def main() -> None:
    cli(prog_name="darknet-sparse")
