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
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CfgError

#: The characters Darknet's ``strip`` deletes (AlexeyAB's set; pjreddie's lacks CR).
BLANKS = " \t\r\n"
_DELETE_BLANKS = str.maketrans("", "", BLANKS)


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
