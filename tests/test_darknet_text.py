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
