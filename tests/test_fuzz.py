"""Fuzzing the readers: damaged cfg text and weights bytes through
``ds.load``, ``reports.info`` and ``ds.threshold``, and through the CLI's
``info`` and ``threshold``.  Whatever the damage (truncation anywhere,
bytes appended, header fields changed, NaN and Inf, random flips, bad
section names, bad numbers, route and shortcut indices out of range, empty
files), the library raises nothing but the :class:`DarknetSparseError`
family, and the CLI exits 0, or 2 with one ``Error:`` line.

``make test`` runs a few hundred cases, derandomised so it never fails by
chance; ``make fuzz`` (``DARKNET_SPARSE_FUZZ=fuzz``) runs 10,000+ random ones.
"""
from __future__ import annotations

import os
import struct
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import darknet_sparse as ds
from darknet_sparse import reports
from darknet_sparse.cli import cli
from tiny_models import SMALL_CFG, write_model

CFGS = Path(__file__).parent / "cfgs"
#: The fixture models: (name, cfg text, fork they are written for).
BASES = [("small", SMALL_CFG, "pjreddie")] + [
    (name, (CFGS / f"{name}.cfg").read_text(), fork) for name, fork in (
        ("pj_zoo", "pjreddie"), ("pj_heads", "pjreddie"), ("pj_recurrent", "pjreddie"), ("pj_deconv", "pjreddie"),
        ("slim_exact", "pjreddie"), ("tiny_detector", "pjreddie"), ("ab_shortcut", "alexeyab"),
        ("ab_pooling", "alexeyab"))]

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz-quick", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=4500, **_COMMON)  # 4500 + 4500 + 2250 cases
PROFILE = settings.get_profile("fuzz" if os.environ.get("DARKNET_SPARSE_FUZZ") == "fuzz" else "fuzz-quick")


@lru_cache(maxsize=None)
def bases() -> list[tuple[str, bytes]]:
    """Each base model's cfg text and a valid weights file for it (a plain
    function, not a fixture: hypothesis would print it with every failure)."""
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text, fork in BASES:
            cfg, weights = write_model(Path(tmp), name, text, fork=fork)
            found.append((text, weights.read_bytes()))
    return found


# --- damage ------------------------------------------------------------------------------------

BAD_NUMBERS = ["-1", "0", "-2147483649", "2147483648", "99999999999", "1e9", "nan", "inf", "-inf", "x", "",
               "3.5", "0x10", "1,", ",", "-0", "1e-40"]
BAD_LINES = ["[foo]", "[", "]", "[net", "[convolutional", "[]", "[route]\nlayers=-99", "[route]\nlayers=42",
             "[route]\nlayers=", "[route]\nlayers=-1,-99", "[shortcut]\nfrom=-50", "[shortcut]\nfrom=7",
             "[shortcut]\nfrom=", "[yolo]\nmask=0,9\nanchors=1,2\nclasses=-3", "[upsample]\nstride=0",
             "[maxpool]\nsize=0\nstride=0", "[convolutional]\nfilters=0", "[connected]\noutput=-4",
             "groups=0", "batch=0", "=", "filters", "\x00", "\ufeff[net]", "layers=1,,2", "#", ";", "[net]"]


@st.composite
def damaged_cfg(draw, text: str) -> bytes:
    """``text`` with one to three kinds of damage, as bytes."""
    for _ in range(draw(st.integers(1, 3))):
        lines = text.split("\n")
        kind = draw(st.sampled_from(["number", "line", "truncate", "append", "delete", "duplicate", "flip",
                                     "empty"]))
        if kind == "number":
            numbered = [i for i, line in enumerate(lines) if "=" in line]
            if numbered:
                i = draw(st.sampled_from(numbered))
                key, _, value = lines[i].partition("=")
                parts = value.split(",")
                j = draw(st.integers(0, len(parts) - 1))
                parts[j] = draw(st.sampled_from(BAD_NUMBERS) | st.integers(-10**12, 10**12).map(str))
                lines[i] = key + "=" + ",".join(parts)
        elif kind == "line":
            lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(BAD_LINES)))
        elif kind == "truncate":
            text = text[:draw(st.integers(0, len(text)))]
            continue
        elif kind == "append":
            text += draw(st.text(max_size=40))
            continue
        elif kind == "delete" and len(lines) > 1:
            del lines[draw(st.integers(0, len(lines) - 1))]
        elif kind == "duplicate":
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
        elif kind == "flip":
            data = bytearray(text.encode())
            for _ in range(draw(st.integers(1, 4))):
                if data:
                    data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
            return bytes(data)
        elif kind == "empty":
            return b""
        text = "\n".join(lines)
    return text.encode()


@st.composite
def damaged_weights(draw, data: bytes) -> bytes:
    """``data`` with one to three kinds of damage."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "append", "header", "nonfinite", "flip", "empty"]))
        if kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "header" and len(data) >= 12:
            field = draw(st.integers(0, 2))
            value = draw(st.sampled_from([0, 1, 2, 5, 999, 1000, 1001, -1, 2**31 - 1, -2**31])
                         | st.integers(-2**31, 2**31 - 1))
            data[4 * field:4 * field + 4] = struct.pack("<i", value)
        elif kind == "nonfinite" and len(data) >= 24:
            at = 20 + 4 * draw(st.integers(0, (len(data) - 24) // 4))
            value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf"), 3.4e38, 1e-45]))
            data[at:at + 4] = struct.pack("<f", value)
        elif kind == "flip" and data:
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif kind == "empty":
            data = bytearray()
    return bytes(data)


@st.composite
def damaged_pair(draw, bases: list[tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """A base model with its cfg, its weights or both damaged."""
    text, weights = draw(st.sampled_from(bases))
    which = draw(st.sampled_from(["cfg", "weights", "both"]))
    cfg = draw(damaged_cfg(text)) if which != "weights" else text.encode()
    weights = draw(damaged_weights(weights)) if which != "cfg" else weights
    return cfg, weights


# --- the checks --------------------------------------------------------------------------------


def _library_calls(folder: Path, cfg: bytes, weights: bytes) -> None:
    (folder / "m.cfg").write_bytes(cfg)
    (folder / "m.weights").write_bytes(weights)
    try:
        wf = ds.load(folder / "m.cfg", folder / "m.weights")
        reports.info_table(reports.info(wf))
        ds.threshold(wf, folder / "out.weights", ds.Magnitude(0.5))
        ds.threshold(wf, None, ds.Absolute(0.05), strict=True)
    except ds.DarknetSparseError as exc:
        event(f"refused: {type(exc).__name__}")  # --hypothesis-show-statistics counts them
    else:
        event("loaded, reported and pruned")


@settings(PROFILE)
@given(data=st.data())
def test_damaged_files_raise_only_darknet_sparse_errors(data) -> None:
    cfg, weights = data.draw(damaged_pair(bases()))
    with tempfile.TemporaryDirectory() as tmp:
        _library_calls(Path(tmp), cfg, weights)


@settings(PROFILE)
@given(data=st.data())
def test_damaged_cfgs_alone_raise_only_darknet_sparse_errors(data) -> None:
    """The cfg reader and layout on their own, past the weights' size check."""
    text, _ = data.draw(st.sampled_from(bases()))
    cfg = data.draw(damaged_cfg(text))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "m.cfg").write_bytes(cfg)
        for fork in ("auto", *ds.FORKS):
            try:
                model = ds.load_model(Path(tmp) / "m.cfg", fork)
                ds.expected_size(model, 20)
            except ds.DarknetSparseError:
                pass


def _cli_ok(result) -> None:
    """Exit 0, or 2 with exactly one Error: line and no traceback."""
    event(f"exit {result.exit_code}")
    if result.exit_code == 0:
        return
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], result.output
    assert len([line for line in lines if line.startswith("Error:")]) == 1 and "Traceback" not in result.output


@settings(PROFILE, max_examples=max(PROFILE.max_examples // 2, 50))
@given(data=st.data())
def test_damaged_files_through_the_cli_are_one_error_line(data) -> None:
    cfg, weights = data.draw(damaged_pair(bases()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "m.cfg").write_bytes(cfg)
        (folder / "m.weights").write_bytes(weights)
        runner = CliRunner()
        _cli_ok(runner.invoke(cli, ["info", str(folder / "m.weights"), "--cfg", str(folder / "m.cfg")]))
        _cli_ok(runner.invoke(cli, ["threshold", str(folder / "m.weights"), "--cfg", str(folder / "m.cfg"),
                                    "-o", str(folder / "out.weights"), "--sparsity", "0.5"]))
