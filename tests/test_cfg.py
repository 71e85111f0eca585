"""The cfg parser reads text the way Darknet's ``read_cfg`` does."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darknet_sparse import CfgError, parse_cfg, read_cfg
from darknet_sparse.format.files import load_model
from helpers.stock import UPSTREAM_CFG_DIR

PLAIN = """\
[net]
batch=64
height=416
width=416
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
activation=leaky

[route]
layers=-1,0
"""


def _parse(text: str):
    return [(s.type, s.line, s.options) for s in parse_cfg(text, "t.cfg")]


def test_sections_options_and_lines():
    sections = parse_cfg(PLAIN, "t.cfg")
    assert [(s.type, s.line) for s in sections] == [("net", 1), ("convolutional", 7), ("route", 13)]
    conv = sections[1]
    assert conv.options == {"batch_normalize": "1", "filters": "16", "size": "3", "activation": "leaky"}
    assert (conv.get_int("filters"), conv.option_lines["filters"], conv.where("size")) == (
        16, 9, "t.cfg:10 [convolutional]")
    assert sections[2].ints("layers") == [-1, 0]


def test_comments_blank_lines_spaces_and_crlf():
    """Darknet drops every space and tab in a line, and (AlexeyAB) CRs."""
    text = ("# a comment\r\n\r\n  [net] \r\n\tbatch = 64\r\n; another comment\r\n"
            "[convolutional]\r\nfil ters\t=\t3 2\r\n  activation = leaky  \r\n#filters=9\r\n\r\n")
    assert _parse(text) == [("net", 3, {"batch": "64"}),
                            ("convolutional", 6, {"filters": "32", "activation": "leaky"})]


def test_only_newline_ends_a_line():
    """Darknet's fgetl splits at \\n: a form feed or a lone CR is not a line break."""
    assert _parse("[net]\nbatch=1\x0c\nheight=2\r\rwidth=3\n") == [
        ("net", 1, {"batch": "1\x0c", "height": "2width=3"})]


def test_a_cfg_file_is_read_with_its_line_ends_as_they_are(tmp_path):
    """No universal newlines: a lone CR in the file does not end a line either."""
    cfg = tmp_path / "cr.cfg"
    cfg.write_bytes(b"[net]\r\nbatch=1\r\nheight=2\r\rwidth=3\n")
    assert [(s.type, s.line, s.options) for s in read_cfg(cfg)] == [
        ("net", 1, {"batch": "1", "height": "2width=3"})]


def test_first_key_wins():
    sections = parse_cfg("[net]\nbatch=1\nbatch=2\n[maxpool]\nsize=2\nsize=3\n", "t.cfg")
    assert sections[0].get_int("batch") == 1 and sections[1].get_int("size") == 2
    assert sections[1].option_lines["size"] == 5


def test_network_is_net():
    assert parse_cfg("[network]\nbatch=1\n", "t.cfg")[0].type == "network"
    model = load_model(UPSTREAM_CFG_DIR / "tiny.cfg", "pjreddie")
    assert model.net.type in ("net", "network")


def test_values_are_read_like_atoi_and_atof():
    section = parse_cfg("[net]\ngroups=40#32\nscale=1.5e-1\nlr=.001\nsteps=-1,61#x\nneg=-3\n", "t.cfg")[0]
    assert section.get_int("groups") == 40
    assert section.get_float("scale") == pytest.approx(0.15)
    assert section.get_float("lr") == pytest.approx(0.001)
    assert section.ints("steps") == [-1, 61]
    assert section.get_int("neg") == -3
    assert section.get_int("missing", 7) == 7 and section.get_float("missing", 0.5) == 0.5


@pytest.mark.parametrize("line,message", [
    ("filters=abc", "t.cfg:3 [convolutional]: filters='abc' is not an integer"),
    ("filters=3.5", "t.cfg:3 [convolutional]: filters='3.5' is not an integer"),
    ("filters=", "t.cfg:3 [convolutional]: expected key=value, found 'filters='"),
    ("filters", "t.cfg:3 [convolutional]: expected key=value, found 'filters'"),
    ("=3", "t.cfg:3 [convolutional]: expected key=value, found '=3'"),
])
def test_bad_values_name_file_line_and_section(line, message):
    with pytest.raises(CfgError, match=re.escape(message)):
        parse_cfg(f"[net]\n[convolutional]\n{line}\n", "t.cfg")[1].get_int("filters")


def test_bad_floats_and_lists():
    section = parse_cfg("[net]\nlr=fast\nlayers=-1,x\n", "t.cfg")[0]
    with pytest.raises(CfgError, match=re.escape("t.cfg:2 [net]: lr='fast' is not a number")):
        section.get_float("lr")
    with pytest.raises(CfgError, match=re.escape("t.cfg:3 [net]: layers='-1,x' is not a list of integers")):
        section.ints("layers")
    with pytest.raises(CfgError, match=re.escape("t.cfg:1 [net]: missing required option from=")):
        section.ints("from")


@pytest.mark.parametrize("text,message", [
    ("batch=1\n[net]\n", "t.cfg:1: option 'batch=1' before any [section]"),
    ("[convolutional]\nfilters=2\n", "t.cfg:1 [convolutional]: the first section must be [net] or [network]"),
    ("# nothing\n\n", "t.cfg: no sections found"),
    ("[net]\n[conv\n", "t.cfg:2: malformed section header '[conv'"),
    ("[net]\n[]\n", "t.cfg:2: malformed section header '[]'"),
])
def test_malformed_files(text, message):
    with pytest.raises(CfgError, match=re.escape(message)):
        parse_cfg(text, "t.cfg")


def test_unknown_section_names_file_line_and_section(tmp_path):
    cfg = tmp_path / "u.cfg"
    cfg.write_text("[net]\nheight=4\nwidth=4\nchannels=3\n\n[convolutionnal]\nfilters=2\n")
    with pytest.raises(CfgError, match=re.escape(f"{cfg}:6 [convolutionnal]: unknown section type [convolutionnal]")):
        load_model(cfg, "pjreddie")


def test_missing_file():
    with pytest.raises(CfgError, match="nope.cfg: cannot read cfg"):
        read_cfg("nope.cfg")


@pytest.mark.parametrize("cfg", sorted(UPSTREAM_CFG_DIR.glob("*.cfg")), ids=lambda p: p.stem)
def test_every_upstream_cfg_parses(cfg):
    sections = read_cfg(cfg)
    assert sections[0].type in ("net", "network") and len(sections) > 1


# ----------------------------------------------------------------- hypothesis

_BLANK = st.sampled_from(["", " ", "\t", "  \t "])
_COMMENT = st.builds(lambda mark, text: mark + text, st.sampled_from(["#", ";", " #", "\t;"]),
                     st.text(st.characters(blacklist_characters="\n\r"), max_size=12))


def _noisy(draw, line: str) -> str:
    """``line`` with spaces and tabs anywhere and an optional CR at the end."""
    out = "".join(draw(_BLANK) + char for char in line) + draw(_BLANK)
    return out + draw(st.sampled_from(["", "\r"]))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_whitespace_and_comments_do_not_change_the_parse(data):
    """Random blanks inside lines, blank lines, comment lines and CRLF give
    the same sections and options, with line numbers that still point at the
    same text."""
    clean = PLAIN.split("\n")
    noisy, origin = [], {}
    for number, line in enumerate(clean, start=1):
        for _ in range(data.draw(st.integers(0, 2))):
            noisy.append(data.draw(st.one_of(_BLANK, _COMMENT)))
        noisy.append(_noisy(data.draw, line) if line else data.draw(_BLANK))
        origin[len(noisy)] = number
    expected = parse_cfg(PLAIN, "t.cfg")
    parsed = parse_cfg("\n".join(noisy), "t.cfg")
    assert [(s.type, s.options) for s in parsed] == [(s.type, s.options) for s in expected]
    for got, want in zip(parsed, expected):
        assert origin[got.line] == want.line
        assert {key: origin[line] for key, line in got.option_lines.items()} == want.option_lines
