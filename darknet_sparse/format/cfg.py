"""Darknet ``.cfg`` text -> ordered sections with line numbers (syntax only).

Parsing follows Darknet's ``read_cfg`` (parser.c): lines are cut and
stripped by :mod:`darknet_text` (every blank anywhere in a line is deleted,
so ``batch = 64`` reads as ``batch=64``); lines starting with ``#`` or ``;``
and empty lines are skipped; a line starting with ``[`` opens a section named
by the whole stripped line; any other line is ``key=value`` split at the first
``=``.  When a key appears twice in a section Darknet's ``option_find`` takes
the first, and so do we.

Values are converted the way Darknet's ``atoi``/``atof`` would read them,
including a trailing ``#comment`` (``groups=40#32`` is 40), but a value that
Darknet would silently read as 0 (``filters=abc``) is an error here: it names
the file, the line and the section.  What the keys mean is ``layout``'s job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CfgError
from . import darknet_text

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass
class Section:
    """One ``[type]`` block: its options in file order, first key winning."""

    type: str
    line: int
    path: str = "<cfg>"
    options: dict[str, str] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str | None = None) -> str:
        """``file:line [section]`` for error messages."""
        line = self.option_lines.get(key, self.line) if key else self.line
        return f"{self.path}:{line} [{self.type}]"

    def has(self, key: str) -> bool:
        return key in self.options

    def _number(self, key: str, default, pattern: re.Pattern, convert, what: str):
        text = self.options.get(key)
        if text is None:
            return default
        number = _leading(pattern, text)
        if number is None:
            raise CfgError(f"{self.where(key)}: {key}={text!r} is not {what}")
        return convert(number)

    def get_int(self, key: str, default: int | None = 0) -> int:
        """An integer option (``atoi`` semantics, but strict about garbage)."""
        return self._number(key, default, _INT, int, "an integer")

    def get_float(self, key: str, default: float | None = 0.0) -> float:
        """A floating-point option (``atof`` semantics, strict about garbage)."""
        return self._number(key, default, _FLOAT, float, "a number")

    def get_str(self, key: str, default: str | None = None) -> str | None:
        """A text option as written (blanks already deleted)."""
        return self.options.get(key, default)

    def ints(self, key: str, default: list[int] | None = None) -> list[int]:
        """A comma-separated integer list such as ``layers=-1,61``."""
        text = self.options.get(key)
        if text is None:
            if default is None:
                raise CfgError(f"{self.where()}: missing required option {key}=")
            return list(default)
        values = [_leading(_INT, item) for item in text.split(",")]
        if None in values:
            raise CfgError(f"{self.where(key)}: {key}={text!r} is not a list of integers")
        return [int(value) for value in values]

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A :class:`CfgError` located at this section (or one of its keys)."""
        return CfgError(f"{self.where(key)}: {message}")


def _leading(pattern: re.Pattern, text: str) -> str | None:
    """The number ``text`` starts with, as ``atoi``/``atof`` read it, if
    nothing but a ``#comment`` follows it."""
    match = pattern.match(text)
    if not match or not (match.end() == len(text) or text[match.end()] == "#"):
        return None
    return match.group(0)


def parse_cfg(text: str, path: str = "<cfg>") -> list[Section]:
    """Split cfg text into sections; the first must be ``[net]``/``[network]``."""
    sections: list[Section] = []
    for number, raw in enumerate(darknet_text.lines(text), start=1):
        line = darknet_text.strip(raw)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"{path}:{number}: malformed section header {raw.strip()!r}")
            sections.append(Section(line[1:-1], number, path))
            continue
        key, eq, value = line.partition("=")
        if not sections:
            raise CfgError(f"{path}:{number}: option {raw.strip()!r} before any [section]")
        if not eq or not key or not value:
            raise CfgError(f"{path}:{number} [{sections[-1].type}]: expected key=value, found {raw.strip()!r}")
        section = sections[-1]
        if key not in section.options:
            section.options[key] = value
            section.option_lines[key] = number
    if not sections:
        raise CfgError(f"{path}: no sections found")
    if sections[0].type not in ("net", "network"):
        raise CfgError(f"{sections[0].where()}: the first section must be [net] or [network]")
    return sections


def read_cfg(path: str | Path) -> list[Section]:
    """Read and parse a cfg file; a missing file is a :class:`CfgError`."""
    return parse_cfg(darknet_text.read_text(path, "cfg", errors="replace"), str(path))
