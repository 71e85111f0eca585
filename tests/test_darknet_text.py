"""Text read the way Darknet reads it (fgetl, strip, read_data_cfg, get_paths)."""
import pytest

from darknet_sparse.format import darknet_text
from darknet_sparse.errors import CfgError


def test_strip_deletes_spaces_tabs_crs_and_newlines_anywhere_but_nothing_else():
    assert darknet_text.strip(" ba tch\t= 6 4 \r\n") == "batch=64"
    assert darknet_text.strip("a\x0cb\x0bc\xa0d") == "a\x0cb\x0bc\xa0d"


def test_lines_end_at_newline_only():
    assert darknet_text.lines("a\r\nb\rc\x0cd\n\ne") == ["a\r", "b\rc\x0cd", "", "e"]
    assert darknet_text.lines("a\n") == ["a"] and darknet_text.lines("") == []


def test_options_skip_comments_and_blank_lines_and_the_first_key_wins():
    text = "# classes=3\n ; x=1\n\n classes = 10 \r\ntrain=a b.list\nclasses=2\nnames=x=y\n"
    assert darknet_text.options(text) == {"classes": "10", "train": "ab.list", "names": "x=y"}


@pytest.mark.parametrize("line", ["classes", "classes=", "classes = "])
def test_a_line_that_is_not_key_value_names_the_file_and_line(line):
    with pytest.raises(CfgError, match=r"^d\.data:2: not a key=value line: 'classes=?'$"):
        darknet_text.options(f"train=a.list\n{line}\n", "d.data")


def test_files_lists_keep_their_lines_whole_and_unreadable_files_are_cfg_errors(tmp_path):
    (tmp_path / "l.list").write_text(" a b.png\n\tc.png \r\n")
    assert darknet_text.read_lines(tmp_path / "l.list") == [" a b.png", "\tc.png \r"]
    (tmp_path / "d.data").write_text("valid = l.list\n")
    assert darknet_text.read_options(tmp_path / "d.data") == {"valid": "l.list"}
    with pytest.raises(CfgError, match="nope.list: cannot read the list"):
        darknet_text.read_lines(tmp_path / "nope.list")
    with pytest.raises(CfgError, match="nope.data: cannot read the .data file"):
        darknet_text.read_options(tmp_path / "nope.data")


def test_section_types_name_every_section_as_darknet_reads_its_header():
    assert darknet_text.section_types("# c\n[net]\nbatch=1\n[ yolo ]\n\n[yolo]\n") == ["net", "yolo", "yolo"]


def test_edit_sections_changes_the_line_darknet_reads_and_keeps_every_other():
    text = ("# comment\n[net]\nbatch = 64  # per step\r\nbatch=2\nwidth=416\n"
            "[convolutional]\nfilters=16\n[yolo]\nrandom=1\n")
    edited = darknet_text.edit_sections(text, {0: {"batch": 8, "seed": 7}, 2: {"random": 0}}, "note")
    assert edited == ("# comment\n[net]\n# note\nseed=7\nbatch = 8  # per step\r\nwidth=416\n"
                      "[convolutional]\nfilters=16\n[yolo]\nrandom=0\n")
    assert darknet_text.edit_sections(text, {}) == text
    assert darknet_text.edit_sections("[net]\nbatch=1", {0: {"batch": 2}}) == "[net]\nbatch=2"  # no final newline
    # a path value is replaced whole; a commented-out key is not an option
    assert darknet_text.edit_sections("[net]\n#train=x\ntrain=/a b\n", {0: {"train": "/c"}}) == (
        "[net]\n#train=x\ntrain=/c\n")


def test_only_a_newline_ends_a_line_for_the_editor():
    # a lone CR or a form feed is inside a line, as for fgetl: "batch=1\r[yolo]" is one option line
    assert darknet_text.section_types("[net]\nbatch=1\r[yolo]\n") == ["net"]
    assert darknet_text.edit_sections("[net]\nwidth=1\fheight=2\n", {0: {"width": 3}}) == "[net]\nwidth=3\fheight=2\n"


def test_edit_sections_refuses_a_section_the_cfg_lacks():
    with pytest.raises(CfgError, match="the cfg has 1 sections, no section 3 to edit"):
        darknet_text.edit_sections("[net]\n", {3: {"a": 1}})


def test_edit_sections_replaces_a_whole_list_value():
    """steps=1600000,1800000 set to 100,200 is 100,200 (not 100,200,1800000: 3 steps for 2 scales crashed
    AlexeyAB's `detector train`), while a comment after a number stays."""
    text = "[net]\nsteps=1600000,1800000\nscales=.1,.1\nfilters = 16  # sixteen\n"
    out = darknet_text.edit_sections(text, {0: {"steps": "100,200", "filters": 8}})
    assert out == "[net]\nsteps=100,200\nscales=.1,.1\nfilters = 8  # sixteen\n"
