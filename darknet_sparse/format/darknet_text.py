"""Text files read the way Darknet reads them: lines, blanks, ``.data`` options, lists.

Darknet reads every text file with ``fgetl`` (``src/utils.c``): a line ends
at ``\\n`` only, which is dropped; a lone CR or a form feed does not end one.
Then each reader treats the line its own way:

``.cfg`` and ``.data`` lines  pass through ``strip``, which deletes every
                              blank *anywhere* in the line, not only at its
                              ends: pjreddie's deletes space, tab and
                              newline, AlexeyAB's CR as well.  :func:`strip`
                              deletes all four, so a CRLF file reads alike in
                              both forks.
``.data`` options             (``read_data_cfg``, ``src/option_list.c``):
                              after stripping, empty lines and lines starting
                              with ``#`` or ``;`` are skipped, the rest are
                              ``key=value`` split at the first ``=``, and
                              ``option_find`` returns the first of a
                              repeated key.
list files                    (``get_paths``, ``src/data.c``): each line is
                              kept whole, blanks included.

Darknet prints a warning for a ``.data`` line that is not ``key=value`` and
carries on; :func:`read_options` makes it an error that names the line.

:func:`edit_sections` is the one editor of cfg text: it cuts lines by the
same rule, so a file's line ends, spacing, comments and every line it does
not change come back as they were.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import CfgError

#: The characters Darknet's ``strip`` deletes (AlexeyAB's set; pjreddie's lacks CR).
BLANKS = " \t\r\n"
_DELETE_BLANKS = str.maketrans("", "", BLANKS)
#: A value's leading number, as ``atoi``/``atof`` read it.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def strip(line: str) -> str:
    """``line`` with every blank deleted, as ``strip`` leaves it: ``batch = 64`` -> ``batch=64``."""
    return line.translate(_DELETE_BLANKS)


def lines(text: str) -> list[str]:
    """``text`` cut into lines as ``fgetl`` returns them: at ``\\n`` only,
    with no empty last line after a final newline."""
    parts = text.split("\n")
    return parts[:-1] if parts[-1] == "" else parts


def options(text: str, source: str = "<data>") -> dict[str, str]:
    """A ``.data`` file's options as ``read_data_cfg`` and ``option_find`` see them."""
    found: dict[str, str] = {}
    for number, raw in enumerate(lines(text), 1):
        line = strip(raw)
        if not line or line[0] in "#;":
            continue
        key, equals, value = line.partition("=")
        if not equals or not value:
            raise CfgError(f"{source}:{number}: not a key=value line: {line!r}")
        found.setdefault(key, value)
    return found


def section_types(text: str) -> list[str]:
    """The type of every section of cfg text, in order (``[ yolo ]`` ->
    ``yolo``): the indices :func:`edit_sections` takes."""
    return [line[1:-1] if line.endswith("]") else line[1:]
            for line in map(strip, lines(text)) if line.startswith("[")]


def edit_sections(text: str, edits: Mapping[int, Mapping[str, object]], note: str | None = None) -> str:
    """cfg ``text`` with ``key=value`` set in the sections ``edits`` names
    by index (0: the first section, ``[net]``; see :func:`section_types`).

    A key the section has keeps its first line (the one Darknet reads), the
    text before ``=`` and the blanks after it, with the new value in place
    of the old (of its leading number, if it starts with one, as ``atoi``
    and ``atof`` read it: ``filters = 16  # sixteen`` keeps its comment);
    its later lines in the section are removed.  A key it lacks is added after
    the section's header, under a ``# note`` line when ``note`` is given.
    Lines are cut at ``\n`` only (:func:`lines`); every other line, and
    whether the text ends with a newline, stay as they are.
    """
    parts = lines(text)
    headers = [i for i, line in enumerate(parts) if strip(line).startswith("[")]
    missing = [index for index in edits if not 0 <= index < len(headers)]
    if missing:
        raise CfgError(f"the cfg has {len(headers)} sections, no section {missing[0]} to edit")
    for index in sorted(edits, reverse=True):
        wanted = {key: str(value) for key, value in edits[index].items()}
        start = headers[index]
        end = headers[index + 1] if index + 1 < len(headers) else len(parts)
        seen: set[str] = set()
        for i in range(end - 1, start, -1):
            key = strip(parts[i]).split("=", 1)[0]
            if key not in wanted or strip(parts[i])[:1] in ("#", ";") or "=" not in parts[i]:
                continue
            if any(key == strip(line).split("=", 1)[0] and "=" in line and strip(line)[:1] not in ("#", ";")
                   for line in parts[start + 1:i]):
                del parts[i]  # a later line of a key Darknet reads from its first
                continue
            before, _, after = parts[i].partition("=")
            value = after.lstrip(" \t")
            number = _NUMBER.match(value)
            kept = value[number.end():] if number else ""
            if not kept[:1].isspace() and kept[:1] not in ("#", ";"):
                # a list (steps=1600000,1800000) or other text after the number is part of the old value
                kept = "\r" if value.endswith("\r") else ""
            parts[i] = before + "=" + after[:len(after) - len(value)] + wanted[key] + kept
            seen.add(key)
        added = [f"{key}={value}" for key, value in wanted.items() if key not in seen]
        if added:
            parts[start + 1:start + 1] = ([f"# {note}"] if note else []) + added
    return "\n".join(parts) + ("\n" if text.endswith("\n") or not text else "")


def read_text(path: str | Path, what: str, errors: str = "surrogateescape") -> str:
    """The text of the file at ``path`` with its line ends as they are (no
    universal newlines: a CR stays a CR); an unreadable file is a
    :class:`CfgError` that says it could not read ``what``."""
    try:
        with open(path, encoding="utf-8", errors=errors, newline="") as fp:
            return fp.read()
    except OSError as exc:
        raise CfgError(f"{path}: cannot read {what}: {exc.strerror}") from None


def read_lines(path: str | Path) -> list[str]:
    """A list file's lines (``get_paths``)."""
    return lines(read_text(path, "the list"))


def read_options(path: str | Path) -> dict[str, str]:
    """The options of the ``.data`` file at ``path`` (see :func:`options`)."""
    return options(read_text(path, "the .data file"), str(path))
