"""The one table renderer every text report shares."""
import pytest

from darknet_sparse.reports import render_table


def test_columns_are_as_wide_as_their_widest_cell_and_right_aligned():
    assert render_table(["layer", "weights"], [[0, "1,024"], [12, "8"]]).split("\n") == [
        "layer  weights",
        "    0    1,024",
        "   12        8"]


def test_align_sets_sides_per_column_and_lines_carry_no_trailing_blanks():
    text = render_table(["layer", "type", "path"], [[3, "conv", None], [10, "maxpool", "sparse"]], align="><<")
    assert text.split("\n") == [
        "layer  type     path",
        "    3  conv",
        "   10  maxpool  sparse"]


def test_headers_alone_make_a_one_line_table():
    assert render_table(["a", "bb"], []) == "a  bb"


def test_a_row_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        render_table(["a", "b"], [[1]])
