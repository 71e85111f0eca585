"""Fixtures of the AlexeyAB tests; a test module imports the ones it uses."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .ab_darknet import PATCHED, STOCK, compile_tool, require


@dataclass(frozen=True)
class Builds:
    patched: Path  # darknet binary
    stock: Path
    patched_tool: Path  # ab_tool.c linked with that build's objects
    stock_tool: Path


@pytest.fixture(scope="session")
def ab(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    folder = tmp_path_factory.mktemp("ab_tool")
    return Builds(require(PATCHED), require(STOCK), compile_tool(PATCHED, folder / "ab_tool_patched"),
                  compile_tool(STOCK, folder / "ab_tool_stock"))
