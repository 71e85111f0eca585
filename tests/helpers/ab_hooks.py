"""The conftest hooks for the AlexeyAB tests (``tests/test_alexeyab_*.py``).

Where no source of AlexeyAB's Darknet was reachable, ``make test`` (through
``scripts/build_darknet_alexeyab.sh --if-available``) leaves the reason in
build/darknet-alexeyab.unavailable instead of the two builds.  Then these
tests are taken out of the run and the summary says, in one line, how many
could not run and why.  Where the builds are there they run; where neither the
builds nor that note are there (pytest run by hand before any build) they run
and fail, saying which make target builds what they need.  Never a silent skip.
"""
from __future__ import annotations

from pathlib import Path

from .ab_darknet import PATCHED, STOCK, UNAVAILABLE, built

PREFIX = "test_alexeyab_"
_KEY = "_alexeyab_not_run"


def pytest_collection_modifyitems(config, items) -> None:
    if built(PATCHED) and built(STOCK):
        return
    if not UNAVAILABLE.is_file():
        return
    mine = [item for item in items if Path(str(item.fspath)).name.startswith(PREFIX)]
    if not mine:
        return
    reason = UNAVAILABLE.read_text().strip().splitlines()[0] if UNAVAILABLE.read_text().strip() else "no reason given"
    items[:] = [item for item in items if item not in mine]
    config.hook.pytest_deselected(items=mine)
    setattr(config, _KEY, (len(mine), reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    found = getattr(config, _KEY, None)
    if found:
        count, reason = found
        terminalreporter.write_line(f"{count} AlexeyAB tests could not run (AlexeyAB's Darknet is not built): {reason}",
                                    yellow=True, bold=True)
