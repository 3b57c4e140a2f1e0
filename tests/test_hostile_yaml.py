"""Hostile and broken YAML (issue 19, class 2): inputs that expand or change meaning.

Every YAML input of the product (batch manifest, validation protocol, study configuration) goes
through ``wbcv.base.yamlfile``. Each class is tried in several variants, by the library call and
through the command line (exit 2, a bounded message naming file and line or key, no traceback).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import PBC_DIR, run_wbcv
from wbcv.base import yamlfile
from wbcv.base.errors import MAX_QUOTED_CHARS, WbcvError, listing, shown
from wbcv.base.yamlfile import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, read_yaml
from wbcv.fixtures.simulator import load_study_config
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.inference.slideset import read_slide_set
from wbcv.validation.protocol import load_protocol

#: A message about a hostile input stays short: the file path, a line, a quoted excerpt.
MAX_MESSAGE = 1500

PROTOCOL = "protocol: {id: P, version: '1'}\nmeasurands:\n  NEUT#: {allowable_error_pct: 10}\n"


# --- alias expansion ("billion laughs") -------------------------------------------------------------


def laugh_block(key: str, indent: str = "") -> str:
    """``key`` holding anchors l0..l9, each a list of ten aliases of the previous: 10**10 leaves in 700 bytes."""
    chain = ["&l0 [" + ", ".join(["lol"] * 10) + "]"]
    chain += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return f"{indent}{key}: [{', '.join(chain)}]\n"


WIDE = "&w [" + ", ".join(["x"] * 1000) + "]"
WIDE_USES = "[" + ", ".join(["*w"] * 1000) + "]"  # 1,000 x 1,000 = a million nodes from 8 kB

#: (where, text): the alias chain in fields nobody type-checks, at several depths and shapes.
MANIFEST_BOMBS = [
    ("notes of a sample", "samples:\n  - sample_id: S00000\n" + laugh_block("notes", "    ")),
    ("top-level description", laugh_block("description") + "samples:\n  - {sample_id: S00000}\n"),
    ("one wide level", f"description: [{WIDE}, {WIDE_USES}]\nsamples:\n  - {{sample_id: S00000}}\n"),
    (
        "sample list itself",
        "samples: [" + ", ".join(["&s {sample_id: S00000}"] + ["*s"] * 3) + "]\n" + laugh_block("x"),
    ),
]
PROTOCOL_BOMBS = [
    ("study description", PROTOCOL + "study:\n" + laugh_block("description", "  ")),
    (
        "protocol title",
        "protocol:\n  id: P\n  version: '1'\n" + laugh_block("title", "  ") + PROTOCOL.split("\n", 1)[1],
    ),
    ("decision levels", PROTOCOL + f"decision_levels: {{NEUT#: [{WIDE}, {WIDE_USES}]}}\n"),
    ("unknown key", PROTOCOL + laugh_block("comment")),
]
STUDY_BOMBS = [
    ("unknown key", laugh_block("comment")),
    ("start", laugh_block("start")),
    ("per-class mapping", f"analyzer_cv: {{basophil: [{WIDE}, {WIDE_USES}]}}\n"),
]


def _message(fn: Callable[[], Any], limit: int = MAX_MESSAGE) -> str:
    with pytest.raises(WbcvError) as e:
        fn()
    text = str(e.value)
    assert len(text) < limit, f"{len(text)} characters: {text[:300]}"
    return text


@pytest.fixture
def batch(tmp_path: Path, pbc_cells) -> Path:
    return build_slide_set(pbc_cells, tmp_path / "batch", n_samples=1, cells_per_slide=2, seed=1)


def _yaml_manifest(batch: Path, text: str) -> Path:
    (batch / "manifest.csv").unlink(missing_ok=True)
    (batch / "cell_labels.csv").unlink(missing_ok=True)
    (batch / "manifest.yaml").write_text(text)
    return batch


@pytest.mark.parametrize("where, text", MANIFEST_BOMBS, ids=[w for w, _ in MANIFEST_BOMBS])
def test_alias_bomb_in_manifest_is_refused(batch, where, text):
    msg = _message(lambda: read_slide_set(_yaml_manifest(batch, text)))
    assert "manifest.yaml line" in msg and f"more than {MAX_YAML_NODES:,} YAML nodes" in msg, msg


@pytest.mark.parametrize("where, text", PROTOCOL_BOMBS, ids=[w for w, _ in PROTOCOL_BOMBS])
def test_alias_bomb_in_protocol_is_refused(tmp_path, where, text):
    p = tmp_path / "protocol.yaml"
    p.write_text(text)
    msg = _message(lambda: load_protocol(p))
    assert str(p) in msg and f"more than {MAX_YAML_NODES:,} YAML nodes" in msg, msg


@pytest.mark.parametrize("where, text", STUDY_BOMBS, ids=[w for w, _ in STUDY_BOMBS])
def test_alias_bomb_in_study_config_is_refused(tmp_path, where, text):
    p = tmp_path / "study.yaml"
    p.write_text(text)
    msg = _message(lambda: load_study_config(p))
    assert str(p) in msg and f"more than {MAX_YAML_NODES:,} YAML nodes" in msg, msg


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a: &a [1, *a]\n", "recursive alias"),
        ("a: &a {b: *a}\n", "recursive alias"),
        # aliases that nest: 10 anchors each wrapping the previous 4 levels deep = 40 levels
        ("".join(f"a{i}: &a{i} [[[[{'*a' + str(i - 1) if i else 1}]]]]\n" for i in range(10)), "nest more than"),
        ("[" * 40 + "]" * 40 + "\n", f"more than {MAX_YAML_DEPTH} levels"),
        ("[" * 5000 + "]" * 5000 + "\n", "nesting depth"),
    ],
)
def test_recursive_and_deep_documents_are_refused(tmp_path, text, fragment):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    msg = _message(lambda: read_yaml(p, "protocol"))
    assert fragment in msg and str(p) in msg


@pytest.fixture(params=["libyaml", "pure-python"])
def loader(request, monkeypatch) -> str:
    """Run a test with libyaml's composer and with PyYAML's pure-Python one (the fallback)."""
    if request.param == "pure-python":
        monkeypatch.setattr(yamlfile, "_LOADER", yamlfile._PyLoader)
    return request.param


@pytest.mark.parametrize(
    "text, fragment",
    [
        (laugh_block("a"), "YAML nodes"),
        ("a: &a [1, *a]\n", "recursive alias"),
        ("a: 1\na: 2\n", "key 'a' appears twice in the same mapping (lines 1 and 2)"),
        ("[" * 40 + "]" * 40 + "\n", "nest"),
        ("[" * 5000 + "]" * 5000 + "\n", "nest"),  # the pure-Python composer recurses: no RecursionError
        ("a: !!binary aGk=\n", "explicit YAML tag '!!binary'"),
        ("a: [1\n", "invalid YAML"),
    ],
)
def test_both_parsers_refuse_the_same_documents(tmp_path, loader, text, fragment):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    assert fragment in _message(lambda: read_yaml(p, "protocol"))


def test_both_parsers_read_the_same_values(tmp_path, loader):
    p = tmp_path / "x.yaml"
    p.write_text("id: 010\nn: 010\nf: 1e3\nb: yes\nt: true\nz: ~\nd: 2026-03-01\n")
    assert read_yaml(p, "protocol", text_keys={"id"}) == {
        "id": "010",
        "n": "010",
        "f": 1000.0,
        "b": "yes",
        "t": True,
        "z": None,
        "d": "2026-03-01",
    }


def test_every_yaml_input_goes_through_the_one_reader():
    repo = Path(__file__).resolve().parent.parent
    sources = [
        p for d in ("wbcv", "inference", "validation", "dashboards", "fixtures") for p in (repo / d).rglob("*.py")
    ]
    users = sorted(
        str(p.relative_to(repo)) for p in sources if re.search(r"^\s*(import yaml|from yaml)", p.read_text(), re.M)
    )
    assert users == ["wbcv/base/yamlfile.py"]


def test_aliases_within_the_limits_still_work(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(
        "protocol: {id: P, version: '1'}\n"
        "measurands:\n  NEUT#: &ten {allowable_error_pct: 10}\n  LYMPH#: *ten\n  MONO#: *ten\n"
    )
    proto = load_protocol(p)
    assert {m: r.allowable_error_pct for m, r in proto.measurands.items()} == {"NEUT#": 10, "LYMPH#": 10, "MONO#": 10}


def test_merge_keys_are_refused(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(
        "protocol: {id: P, version: '1'}\n"
        "measurands:\n  NEUT#: &base {allowable_error_pct: 10}\n  LYMPH#: {<<: *base, allowable_error_pct: 50}\n"
    )
    msg = _message(lambda: load_protocol(p))
    assert "line 4" in msg and "merge keys" in msg


# --- size ---------------------------------------------------------------------------------------------


def test_too_large_yaml_is_refused_before_parsing(tmp_path, batch):
    big = "# padding\n" * (MAX_YAML_BYTES // 10 + 1)
    p = tmp_path / "p.yaml"
    p.write_text(PROTOCOL + big)
    msg = _message(lambda: load_protocol(p))
    assert "larger than 2 MiB" in msg
    c = tmp_path / "c.yaml"
    c.write_text(big)
    assert "larger than 2 MiB" in _message(lambda: load_study_config(c))
    assert "larger than 2 MiB" in _message(lambda: read_slide_set(_yaml_manifest(batch, "samples: []\n" + big)))


def test_a_fifo_or_device_never_blocks(tmp_path):
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    assert "not a regular file" in _message(lambda: load_protocol(fifo))
    assert "not a regular file" in _message(lambda: load_protocol("/dev/zero"))
    assert "does not exist" in _message(lambda: load_study_config(tmp_path / "none.yaml"))


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"protocol: {id: P}\n\xff\xfe\n", "line 2: byte 0xff at offset 18 is not UTF-8"),
        (b"protocol: {id: P}\nid: a\x00b\n", "line 2: contains a NUL character"),
    ],
)
def test_bytes_that_are_not_utf8_text(tmp_path, data, fragment):
    p = tmp_path / "p.yaml"
    p.write_bytes(data)
    assert fragment in _message(lambda: load_protocol(p))


# --- duplicate keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, lines",
    [
        # the same measurand with a second, looser limit: YAML keeps the second silently
        (PROTOCOL + "  NEUT#: {allowable_error_pct: 50}\n", "NEUT#", (3, 4)),
        (
            "protocol: {id: P, version: '1'}\nmeasurands:\n  NEUT#:\n    allowable_error_pct: 10\n"
            "    allowable_error_pct: 50\n",
            "allowable_error_pct",
            (4, 5),
        ),
        (PROTOCOL + "measurands: {LYMPH#: {allowable_error_pct: 10}}\n", "measurands", (2, 4)),
        (PROTOCOL + "acceptance: {required_coverage: 0.95, required_coverage: 0.5}\n", "required_coverage", (4, 4)),
        ("protocol: {id: P, version: '1', version: '2'}\n" + PROTOCOL.split("\n", 1)[1], "version", (1, 1)),
    ],
)
def test_duplicate_keys_in_protocol_name_key_and_both_lines(tmp_path, text, key, lines):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    msg = _message(lambda: load_protocol(p))
    assert f"key {key!r} appears twice in the same mapping (lines {lines[0]} and {lines[1]})" in msg, msg


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("samples:\n  - {sample_id: S00000}\nsamples:\n  - {sample_id: S00001}\n", "samples", (1, 3)),
        ("samples:\n  - sample_id: S00000\n    sample_id: S00001\n", "sample_id", (2, 3)),
        ("batch_id: A\nbatch_id: B\nsamples:\n  - {sample_id: S00000}\n", "batch_id", (1, 2)),
        ("samples:\n  - {sample_id: S00000, notes: a, notes: b}\n", "notes", (2, 2)),
    ],
)
def test_duplicate_keys_in_manifest(batch, text, key, lines):
    msg = _message(lambda: read_slide_set(_yaml_manifest(batch, text)))
    assert f"key {key!r} appears twice in the same mapping (lines {lines[0]} and {lines[1]})" in msg, msg


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("reruns: 1\nreruns: 0\n", "reruns", (1, 2)),
        ("analyzer_cv:\n  basophil: 0.2\n  basophil: 0.9\n", "basophil", (2, 3)),
    ],
)
def test_duplicate_keys_in_study_config(tmp_path, text, key, lines):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    msg = _message(lambda: load_study_config(p))
    assert f"key {key!r} appears twice in the same mapping (lines {lines[0]} and {lines[1]})" in msg, msg


# --- scalars that change meaning ------------------------------------------------------------------------

#: Ids as a user writes them unquoted; YAML 1.1 (PyYAML's safe_load) turns them into 8, 1, 1000.0 (no:
#: PyYAML keeps '1e3'), True, 31, 1000 and 90.
TRICKY_IDS = ["010", "001", "1e3", "yes", "0x1F", "1_000", "1:30", "2026-03-01", "1.10", "true", "NaN"]


def test_manifest_ids_are_the_text_written(tmp_path, pbc_cells):
    batch = build_slide_set(pbc_cells, tmp_path / "b", n_samples=len(TRICKY_IDS), cells_per_slide=1, seed=1)
    for i, sid in enumerate(TRICKY_IDS):
        os.rename(batch / f"S{i:05d}", batch / sid.replace(":", "_"))
    entries = "".join(f"  - {{sample_id: {sid}, slide_dir: {sid.replace(':', '_')}}}\n" for sid in TRICKY_IDS)
    s = read_slide_set(_yaml_manifest(batch, "batch_id: 007\ndescription: 2026-03-01\nsamples:\n" + entries))
    assert [x.sample_id for x in s.samples] == TRICKY_IDS
    assert s.batch_id == "007"


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ("{sample_id: [a, b]}", "field 'sample_id' must be text, got a list ['a', 'b']"),
        ("{sample_id: S00000, notes: {a: 1}}", "field 'notes' must be text, got a dict"),
        ("{sample_id: S00000, scanner: [1, 2]}", "field 'scanner' must be text, got a list"),
        ("{sample_id: S00000, imaged_volume_ul: true}", "field 'imaged_volume_ul' is True; expected a positive number"),
        ("{sample_id: S00000, imaged_volume_ul: 0x1F}", "field 'imaged_volume_ul' is '0x1F'; expected a positive"),
        ("{sample_id: S00000, imaged_volume_ul: 1_000}", "field 'imaged_volume_ul' is '1_000'; expected a positive"),
        ("{sample_id: S00000, imaged_volume_ul: .inf}", "field 'imaged_volume_ul' is inf; expected a positive"),
        ("{sample_id: S00000, date: 2026-1-1}", "field 'date' is '2026-1-1'; expected YYYY-MM-DD"),
        ("{sample_id: ~}", "field 'sample_id' is missing or empty"),
        ("{sample_id: !!int 010}", "explicit YAML tag '!!int' is not supported"),
    ],
)
def test_manifest_fields_are_type_checked(batch, entry, fragment):
    msg = _message(lambda: read_slide_set(_yaml_manifest(batch, f"samples:\n  - {entry}\n")))
    assert fragment in msg, msg


def test_manifest_top_level_text_fields_are_type_checked(batch):
    msg = _message(lambda: read_slide_set(_yaml_manifest(batch, "batch_id: [1]\nsamples:\n  - {sample_id: S00000}\n")))
    assert "key 'batch_id' must be text, got a list" in msg


def test_manifest_csv_ids_keep_leading_zeros(tmp_path, pbc_cells):
    batch = build_slide_set(pbc_cells, tmp_path / "b", n_samples=5, cells_per_slide=1, seed=1, with_labels=False)
    ids = ["010", "001", "1e3", "yes", "0x1F"]
    for i, sid in enumerate(ids):
        os.rename(batch / f"S{i:05d}", batch / sid)
    (batch / "manifest.csv").write_text("sample_id,imaged_volume_ul\n" + "".join(f"{s},0.25\n" for s in ids))
    assert [x.sample_id for x in read_slide_set(batch).samples] == ids


def test_protocol_texts_are_as_written_and_numbers_are_plain_decimals(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(
        "protocol: {id: 010, version: 1.10, title: yes}\nstudy: {id: 0x1F, site: 2026-03-01}\n"
        "measurands: {NEUT#: {allowable_error_pct: 1e1}}\nexclusions: {flags: [010, on]}\n"
    )
    proto = load_protocol(p)
    assert (proto.id, proto.version, proto.title) == ("010", "1.10", "yes")
    assert proto.study == {"id": "0x1F", "site": "2026-03-01"}
    assert proto.measurands["NEUT#"].allowable_error_pct == 10.0 and proto.exclude_flags == ("010", "on")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("acceptance: {required_coverage: 0o7}\n", "must be a number, got '0o7' (numbers are read as plain decimals"),
        ("exclusions: {min_cells: 010}\n", "is '010'; expected a whole number >= 0 (numbers are read as plain"),
        ("exclusions: {min_cells: yes}\n", "exclusions.min_cells: is 'yes'; expected a whole number"),
        ("acceptance: {confidence: 1_0}\n", "must be a number, got '1_0'"),
        ("decision_levels: {NEUT#: [0x10]}\n", "decision_levels.NEUT#: is ['0x10']; expected a list of numbers"),
        ("study: {description: [a, b]}\n", "study.description: must be text, got a list ['a', 'b']"),
        ("exclusions: {marks: [[a]]}\n", "exclusions.marks: is [['a']]"),
        ("count_mode: [relative]\n", "count_mode: is ['relative']; expected one of relative, volumetric"),
    ],
)
def test_protocol_values_that_change_meaning_are_errors(tmp_path, extra, fragment):
    p = tmp_path / "p.yaml"
    p.write_text(PROTOCOL + extra)
    msg = _message(lambda: load_protocol(p))
    assert fragment in msg, msg


def test_protocol_meta_must_be_text(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("protocol: {id: [1, 2], version: {a: 1}, title: [x]}\n" + PROTOCOL.split("\n", 1)[1])
    msg = _message(lambda: load_protocol(p))
    assert "protocol.id: must be text, got a list" in msg and "protocol.version: must be text, got a dict" in msg
    assert "protocol.title: must be text, got a list" in msg


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("reruns: 010\n", "reruns: expected a whole number from 0 to 100, got '010' (numbers are read as plain"),
        ("wbc_cv: 0x1\n", "wbc_cv: expected a number from 0 to 1, got '0x1'"),
        ("wbc_cv: yes\n", "wbc_cv: expected a number from 0 to 1, got 'yes'"),
        ("start: [2026]\n", "start: expected a date and time like 2026-03-02T08:00:00, got ['2026']"),
    ],
)
def test_study_config_values_that_change_meaning_are_errors(tmp_path, text, fragment):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    assert fragment in _message(lambda: load_study_config(p))


def test_study_config_start_is_read_as_written(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("start: 2026-03-02 08:00:00\nwbc_cv: 1e-2\n")
    cfg = load_study_config(p)
    assert str(cfg.start) == "2026-03-02 08:00:00" and cfg.wbc_cv == 0.01


# --- bounded messages ----------------------------------------------------------------------------------


def test_shown_bounds_any_value():
    assert shown("x" * 10) == "'xxxxxxxxxx'"
    long = shown("y" * 1_000_000)
    assert len(long) < MAX_QUOTED_CHARS + 40 and "(1,000,000 characters)" in long
    nested: list[Any] = ["z" * 1000]
    for _ in range(50):
        nested = [nested] * 1000
    assert len(shown(nested)) <= MAX_QUOTED_CHARS + 1
    assert len(shown(10**5000)) < MAX_QUOTED_CHARS + 10  # more digits than Python prints
    assert listing([f"p{i}" for i in range(120)])[-1] == "… and 70 more problems (fix the ones above first)"


@pytest.mark.slow  # starts the command line or a whole run
@pytest.mark.parametrize(
    "text",
    [
        PROTOCOL + ("k" * 500_000) + ": 1\n",  # a half-megabyte unknown key
        PROTOCOL.replace("NEUT#", "N" * 500_000),  # a half-megabyte measurand name
        PROTOCOL + "acceptance: {basis: " + "b" * 500_000 + "}\n",
        PROTOCOL + "protocol: 1\n",  # duplicate top-level key with a long line elsewhere
        PROTOCOL + "acceptance: {required_coverage: [" + ", ".join(["1"] * 100_000) + "]}\n",
    ],
)
def test_protocol_messages_are_bounded(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    _message(lambda: load_protocol(p))


def test_a_list_of_problems_shows_the_first_fifty_and_counts_the_rest(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("".join(f"k{i}: 1\n" for i in range(5000)) + PROTOCOL)  # 5,000 unknown keys
    msg = _message(lambda: load_protocol(p), limit=50 * 300)
    assert "the protocol has 5000 problems" in msg and "k49: unknown key" in msg and "k50:" not in msg
    assert msg.endswith("… and 4,950 more problems (fix the ones above first)")


def test_manifest_messages_are_bounded(batch):
    huge = "s" * 300_000
    msg = _message(lambda: read_slide_set(_yaml_manifest(batch, f"samples:\n  - {{sample_id: {huge}}}\n")))
    assert "(300,000 characters)" in msg
    many = "".join(f"  - {{sample_id: X{i}}}\n" for i in range(3000))  # 3,000 missing slide folders
    msg = _message(lambda: read_slide_set(_yaml_manifest(batch, "samples:\n" + many)), limit=50 * 300)
    assert "3000 problems" in msg and "… and 2,950 more problems" in msg


# --- through the command line -------------------------------------------------------------------------


def _cli_fails(*args: str) -> str:
    r = run_wbcv(*args, timeout=120)  # the time limit: a hang or a slow expansion fails the test
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(r.stderr) < MAX_MESSAGE, r.stderr[:2000]
    return r.stderr


@pytest.mark.slow  # starts the command line or a whole run
def test_cli_refuses_hostile_manifest_protocol_and_study_config(tmp_path, batch, model_dir):
    runs = tmp_path / "runs"
    _yaml_manifest(batch, MANIFEST_BOMBS[0][1])
    err = _cli_fails("infer", str(batch), "--model", str(model_dir), "--out", str(runs), "--no-progress")
    assert "YAML nodes" in err and "manifest.yaml line" in err
    _yaml_manifest(batch, "samples:\n  - {sample_id: S00000}\n  - {sample_id: S00000, sample_id: S00001}\n")
    err = _cli_fails("infer", str(batch), "--model", str(model_dir), "--out", str(runs), "--no-progress")
    assert "key 'sample_id' appears twice in the same mapping (lines 3 and 3)" in err

    ref = tmp_path / "XN.csv"
    ref.write_text("Sample No.,WBC(10^3/uL),NEUT#(10^3/uL)\nS00000,5.0,3.0\n")
    for name, text, fragment in [
        ("bomb.yaml", PROTOCOL_BOMBS[0][1], "YAML nodes"),
        ("twice.yaml", PROTOCOL + "  NEUT#: {allowable_error_pct: 50}\n", "key 'NEUT#' appears twice"),
        ("octal.yaml", PROTOCOL + "exclusions: {min_cells: 0100}\n", "is '0100'; expected a whole number"),
    ]:
        proto = tmp_path / name
        proto.write_text(text)
        args = ("run", str(batch), "--model", str(model_dir), "--reference", str(ref), "--protocol", str(proto))
        err = _cli_fails(*args, "--out", str(runs), "--no-progress")
        assert fragment in err and str(proto) in err, err

    study = tmp_path / "study.yaml"
    study.write_text(STUDY_BOMBS[0][1])
    out = tmp_path / "sim"
    err = _cli_fails(
        "simulate",
        "--cells",
        str(PBC_DIR),
        "--samples",
        "2",
        "--cells-per-slide",
        "2",
        "--out",
        str(out),
        "--config",
        str(study),
    )
    assert "YAML nodes" in err and str(study) in err


@pytest.mark.slow  # starts the command line or a whole run
def test_cli_keeps_ids_as_written_from_yaml_and_csv_manifests(tmp_path, pbc_cells, model_dir):
    ids = ["010", "001", "1e3", "yes", "0x1F"]
    for kind in ("yaml", "csv"):
        batch = build_slide_set(pbc_cells, tmp_path / kind, n_samples=len(ids), cells_per_slide=1, seed=2)
        (batch / "cell_labels.csv").unlink()
        for i, sid in enumerate(ids):
            os.rename(batch / f"S{i:05d}", batch / sid)
        if kind == "yaml":
            _yaml_manifest(batch, "samples:\n" + "".join(f"  - sample_id: {s}\n" for s in ids))
        else:
            (batch / "manifest.csv").write_text("sample_id\n" + "".join(f"{s}\n" for s in ids))
        runs = tmp_path / f"runs-{kind}"
        r = run_wbcv("infer", str(batch), "--model", str(model_dir), "--out", str(runs), "--no-progress", timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        (run,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
        assert pl.read_parquet(run / "counts.parquet")["sample_id"].to_list() == ids
        shutil.rmtree(batch)
