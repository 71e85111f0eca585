"""Running the Darknet binary as a subprocess: training, evaluating, and
the private cfg and data files training needs.

Darknet reads a cfg or ``.data`` line with every blank removed
(:func:`darknet_text.strip`) and builds backup file names in ``char[256]``,
so a folder it writes into must have no whitespace and a short path
(:func:`check_folder`).  Darknet runs in the caller's working folder, so
relative paths in a data file mean what they mean to the user.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from ..errors import CfgError, DarknetRunError, OutputError
from ..format import darknet_text
from ..format.cfg import read_cfg
from ..format.layout import alexeyab_markers

#: Darknet subcommand and the name ``train`` gives its last weights (``base``
#: is the cfg's file name up to its first dot: ``basecfg`` in utils.c).
#: ``detector train`` (examples/detector.c) also writes ``base.backup`` every
#: 100 batches and ``base_N.weights`` at N = 100, 200, ... 900 and every
#: 10000; :func:`train` keeps only the final file.
TASKS = {"classifier": "{base}.weights", "detector": "{base}_final.weights"}
#: AlexeyAB's ``train`` names its last weights ``base_final`` for both tasks.
ALEXEYAB_TASKS = {"classifier": "{base}_final.weights", "detector": "{base}_final.weights"}
#: AlexeyAB's train: no window (-dont_show), no mAP on a valid= list every few epochs (-nomap).
#: Its ``classifier train`` has no -nomap: it computes top-k on ``valid=``
#: during training only with -topk, which the loop never passes.
ALEXEYAB_TRAIN_OPTIONS = {"classifier": ("-dont_show",), "detector": ("-dont_show", "-nomap")}
#: Layer types with prunable weights whose weights AlexeyAB's training never
#: changes: its ``update_network`` (CPU and GPU) skips every layer with
#: ``l.train == 0``, and only convolutional, crnn, conv_lstm, shortcut and
#: maxpool layers set it (patches/alexeyab/README.md, "The prune phase").
ALEXEYAB_UNTRAINED = ("connected", "local", "deconvolutional", "rnn", "gru", "lstm")
# Darknet builds backup file names in char[256]: leave room for the name.
_MAX_FOLDER_CHARS = 200
_TAIL_LINES = 15


def darknet_binary(fork: str = "pjreddie") -> Path:
    """The patched Darknet binary of ``fork`` to run when the caller names
    none (:func:`darknet_sparse.darknet.home.find_darknet`)."""
    from . import home
    return home.find_darknet(fork=fork)


def check_binary(path: Path) -> None:
    """``path`` is an executable file, else a :class:`DarknetRunError`."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise DarknetRunError(f"{path}: no Darknet binary there; build the patched one "
                              "with `darknet-sparse build` or pass its path (--darknet)")


def check_cfg(cfg: str | Path) -> None:
    """Where the model runs in pjreddie's Darknet: refuse a cfg that only
    AlexeyAB's parser reads right (pjreddie's would misread it, or die)."""
    markers = alexeyab_markers(read_cfg(cfg))
    if markers:
        raise CfgError(f"{cfg}: uses AlexeyAB-only features ({', '.join(markers[:3])}"
                       f"{' ...' if len(markers) > 3 else ''}); this runs the model in pjreddie's patched "
                       "Darknet, which cannot run it (in-process commands: --fork alexeyab or auto)")


def check_folder(folder: Path) -> None:
    """A folder Darknet can write its backups into (no whitespace, a short path)."""
    if re.search(r"\s", str(folder)) or len(str(folder)) > _MAX_FOLDER_CHARS:
        raise OutputError(f"{folder}: Darknet needs an output folder without whitespace and at most "
                          f"{_MAX_FOLDER_CHARS} characters long")


def retrain_cfg(text: str, iterations: int, learning_rate: float | None = None,
                net: Mapping[str, object] | None = None,
                sections: Mapping[str, Mapping[str, object]] | None = None) -> str:
    """The cfg text with ``max_batches``, ``prune=1`` (and ``learning_rate``,
    and the options of ``net``) set at the top of its ``[net]`` section, and
    the options of ``sections[type]`` in every ``[type]`` section
    (:func:`set_options`)."""
    options = {"max_batches": iterations, "prune": 1}
    if learning_rate is not None:
        options["learning_rate"] = f"{learning_rate:g}"
    options.update(net or {})
    return set_options(text, options, sections)


def set_options(text: str, net: Mapping[str, object],
                sections: Mapping[str, Mapping[str, object]] | None = None) -> str:
    """The cfg text with the options of ``net`` set in its ``[net]`` section
    and those of ``sections[type]`` in every ``[type]`` section
    (``{"yolo": {"random": 0}}``), by :func:`darknet_text.edit_sections`:
    an option the section has is changed on its line, one it lacks is added
    under a ``# set by darknet-sparse loop`` line."""
    types = darknet_text.section_types(text)
    if not types or types[0] not in ("net", "network"):
        raise CfgError("the cfg's first section must be [net] or [network]")
    edits = {0: net} if net else {}
    for index, kind in enumerate(types[1:], 1):
        if sections and sections.get(kind):
            edits[index] = sections[kind]
    return darknet_text.edit_sections(text, edits, "set by darknet-sparse loop")


def private_data(text: str, backup: Path, train: Path | None = None) -> str:
    """The data file's text with ``backup=`` pointing at ``backup`` (and
    ``train=`` at ``train``, when given)."""
    replaced = {"backup"} | ({"train"} if train is not None else set())
    kept = [line for line in text.splitlines() if _key(line).split("=", 1)[0] not in replaced]
    added = ([f"train={train}"] if train is not None else []) + [f"backup={backup}"]
    return "\n".join(kept + added) + "\n"


def _key(line: str) -> str:
    """A cfg or data line as Darknet reads it: every blank removed."""
    return darknet_text.strip(line)


def train(darknet: Path, task: str, data: Path, cfg: Path, weights: Path, backup: Path, log: Path,
          into: Path, options: tuple[str, ...] = ()) -> None:
    """Run ``darknet <task> train DATA CFG WEIGHTS -clear [options]`` (output
    to ``log``) and move the weights it saves last into ``into``.

    ``backup`` is the data file's ``backup=`` folder; it is emptied before
    and after.  ``-clear`` starts ``seen`` at 0: otherwise ``train`` would
    carry on from the ``seen`` stored in the weights and stop at once.
    """
    for stale in backup.iterdir():
        stale.unlink()
    command = [str(darknet), task, "train", str(data), str(cfg), str(weights), "-clear", *options]
    with open(log, "wb") as fp:
        try:
            status = subprocess.run(command, stdout=fp, stderr=subprocess.STDOUT, check=False).returncode
        except OSError as exc:
            raise DarknetRunError(f"cannot run {darknet}: {exc.strerror}") from None
    name = ALEXEYAB_TASKS[task] if "-dont_show" in options else TASKS[task]  # AlexeyAB's: both _final
    produced = backup / name.format(base=cfg.name.split(".")[0])
    if status != 0 or not produced.is_file():
        reason = _status(status) if status != 0 else f"it wrote no {produced.name}"
        raise DarknetRunError(f"{' '.join(command)}: {reason}; last output ({log}):\n{_tail(log)}")
    os.replace(produced, into)
    for snapshot in backup.iterdir():
        snapshot.unlink()


def evaluate(darknet: Path, eval_cmd: str | None, cfg: Path, data: Path, weights: Path, step: int) -> float:
    """The score of ``weights``: the last output line of ``eval_cmd``, or,
    without one, the top-1 of ``darknet classifier valid``.

    The command runs through ``sh`` with ``{weights}``, ``{cfg}``, ``{data}``
    and ``{step}`` replaced by the shell-quoted values, which are also in the
    environment as ``DARKNET_SPARSE_WEIGHTS``, ``_CFG``, ``_DATA``, ``_STEP``.
    """
    if not eval_cmd:
        from .examples import classifier_top1
        return classifier_top1(darknet, data, cfg, weights)
    values = {"weights": weights, "cfg": cfg, "data": data, "step": step}
    command = eval_cmd
    for name, value in values.items():
        command = command.replace("{" + name + "}", shlex.quote(str(value)))
    env = dict(os.environ, **{f"DARKNET_SPARSE_{k.upper()}": str(v) for k, v in values.items()})
    run = subprocess.run(command, shell=True, capture_output=True, text=True, errors="replace", env=env,
                         check=False)
    output = (run.stdout + run.stderr).splitlines()
    if run.returncode != 0:
        raise DarknetRunError(f"evaluation command {command!r}: {_status(run.returncode)}; last output:\n"
                              + "\n".join(output[-_TAIL_LINES:]))
    lines = [line.strip() for line in run.stdout.splitlines() if line.strip()]
    try:
        score = float(lines[-1])
    except (IndexError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise DarknetRunError(f"evaluation command {command!r}: its last output line is not a number: "
                              f"{lines[-1] if lines else '(no output)'!r}")
    return score


def _status(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-_TAIL_LINES:])
