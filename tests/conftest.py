"""Shared fixtures.

Stock Darknet as an oracle (see ``helpers/stock.py``):

- ``stock_tool``: ``helpers/stock_tool.c`` compiled once per session against
  Debian's ``/usr/lib/darknet/libdarknet.so`` (init / resave / dump).
- ``stock_saved``: ``stock_saved(cfg) -> Saved``, the file stock Darknet
  initialises and saves for a cfg, made once per session and cached (its
  size and layer table always; the file itself up to ``ROUND_TRIP_LIMIT``).

The example model, once per test module (a module may write into them):

- ``digits``: the digits data set (``write_digits``), its ``.data`` path.
- ``model_files``: a private copy of ``cfg/digits.cfg`` and ``cfg/digits.weights``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from darknet_sparse.darknet.examples import write_digits
from helpers.stock import ROUND_TRIP_LIMIT, Saved, StockTool, build
# The AlexeyAB tests' hooks: where the fork could not be built, one summary line says so.
from helpers.ab_hooks import pytest_collection_modifyitems, pytest_terminal_summary  # noqa: F401


@pytest.fixture(autouse=True)
def no_file_left_in_the_working_folder():
    """Nothing a test runs writes into the caller's working folder: AlexeyAB's
    loader appends every image whose label file it cannot open to ./bad.list."""
    stray = Path("bad.list")
    before = stray.exists()
    yield
    assert before or not stray.exists(), f"a test left {stray.resolve()} behind"


@pytest.fixture(scope="session")
def stock_tool(tmp_path_factory: pytest.TempPathFactory) -> StockTool:
    source = Path(__file__).parent / "helpers" / "stock_tool.c"
    return StockTool(build(source, tmp_path_factory.mktemp("stock_tool")))


@pytest.fixture(scope="session")
def stock_saved(stock_tool: StockTool, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Saved]:
    folder = tmp_path_factory.mktemp("stock_saved")
    cache: dict[Path, Saved] = {}

    def saved(cfg: Path) -> Saved:
        if cfg not in cache:
            cache[cfg] = stock_tool.init(cfg, folder / f"{cfg.stem}.weights", ROUND_TRIP_LIMIT)
        return cache[cfg]

    return saved


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits(tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A private copy of the example cfg and weights."""
    folder = tmp_path_factory.mktemp("model")
    for name in ("digits.cfg", "digits.weights"):
        shutil.copy(REPO / "cfg" / name, folder / name)
    return folder / "digits.cfg", folder / "digits.weights"
