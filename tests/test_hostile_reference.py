"""Reference files that are wrong but look plausible (issue 19, class 3).

Undecodable bytes, files too large or not files at all, rows that do not fit the header and values
that contradict each other: each is refused with a message naming file, offset or row, or excluded
with a reason that reaches excluded.parquet and the report; several variants per class, by the
library and through `wbcv compare`.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import run_wbcv
from wbcv.base.errors import WbcvError
from wbcv.base.records import BatchRef, InferenceRecord, InferenceSummary, ModelRef
from wbcv.base.runstore import WorkingRun
from wbcv.base.software import software_info
from wbcv.base.tables import (
    COUNTS_FILE,
    EXCLUDED_FILE,
    PREDICTION_SCHEMA,
    PREDICTIONS_FILE,
    SKIPPED_FILE,
    SKIPPED_SCHEMA,
)
from wbcv.fixtures.classifiers import counts_table
from wbcv.validation.compare import compare
from wbcv.validation.protocol import load_protocol
from wbcv.validation.reference import (
    MAX_LINE_CHARS,
    MAX_PREAMBLE_LINES,
    MAX_REFERENCE_BYTES,
    PART_TOLERANCE_ABS,
    PERCENT_SUM_TOLERANCE,
    implausibility,
    read_reference,
)
from wbcv.validation.report import load_report_data, render_html

MAX_MESSAGE = 1500

HEADER = (
    "Sample No.,WBC(10^3/uL),"
    + ",".join(f"{c}#(10^3/uL)" for c in ("NEUT", "LYMPH", "MONO", "EO", "BASO"))
    + ","
    + ",".join(f"{c}%(%)" for c in ("NEUT", "LYMPH", "MONO", "EO", "BASO"))
)


def row(sid: str, wbc: float = 5.0, pct: tuple[float, ...] = (60, 30, 6, 3, 1), counts: tuple | None = None) -> str:
    """A consistent Sysmex row: counts = WBC x percentages unless given."""
    c = counts if counts is not None else tuple(round(wbc * p / 100, 2) for p in pct)
    return ",".join([sid, f"{wbc:g}", *(f"{x:g}" for x in c), *(f"{p:g}" for p in pct)])


def write(tmp_path: Path, data: bytes | str, name: str = "XN.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def _refused(path: Path) -> str:
    with pytest.raises(WbcvError) as e:
        read_reference(path)
    text = str(e.value)
    assert str(path) in text and len(text) < MAX_MESSAGE, text[:2000]
    return text


# --- undecodable bytes ----------------------------------------------------------------------------------

GOOD = (HEADER + "\n" + row("S1") + "\n").encode()


@pytest.mark.parametrize(
    "data, offset, line, byte",
    [
        (GOOD + b"S2,5.0,3.0\x81,1.5,0.3,0.15,0.05,60,30,6,3,1\n", len(GOOD) + 10, 3, 0x81),  # in a value
        (GOOD.replace(b"S1", b"S\x9d1"), len(HEADER) + 2, 2, 0x9D),  # in a sample number
        (b"\x8f" + GOOD, 0, 1, 0x8F),  # first byte
        (GOOD + b"S3,\x90\n" + b"x" * 10 + b"\xe2\x82", len(GOOD) + 3, 3, 0x90),  # and a cut UTF-8 sequence
    ],
)
def test_bytes_neither_utf8_nor_cp1252_are_refused_with_offset_and_line(tmp_path, data, offset, line, byte):
    msg = _refused(write(tmp_path, data))
    assert f"byte 0x{byte:02X} at offset {offset:,} (line {line}) is not Windows-1252 (cp1252)" in msg, msg
    assert "is not UTF-8" in msg and "tried UTF-8 with or without BOM and cp1252" in msg


def test_a_cut_utf8_sequence_at_the_end_and_a_byte_undefined_in_cp1252(tmp_path):
    # U+0081 is valid UTF-8 (C2 81) but 0x81 is undefined in cp1252; E2 82 at the end is a cut sequence
    data = GOOD + b"S3,\xc2\x81\n" + b"\xe2\x82"
    msg = _refused(write(tmp_path, data))
    assert f"byte 0xE2 at offset {len(GOOD) + 6:,} (line 4) is not UTF-8" in msg, msg
    assert f"byte 0x81 at offset {len(GOOD) + 4:,} (line 3) is not Windows-1252" in msg, msg


def test_offsets_are_right_beyond_the_first_read_chunk(tmp_path):
    filler = "".join(row(f"S{i:06d}") + "\n" for i in range(40_000)).encode()  # about 1.6 MB
    data = GOOD + filler + b"S9,\x81\n"
    msg = _refused(write(tmp_path, data))
    assert f"byte 0x81 at offset {len(GOOD) + len(filler) + 3:,} (line {40_003})" in msg, msg


def test_multibyte_characters_across_chunk_boundaries_are_utf8(tmp_path):
    head = (HEADER + ",Nickname\n").encode()
    one = len(row("S000000") + ",n\n")
    filler = "".join(row(f"S{i:06d}") + ",n\n" for i in range((1024 * 1024 - 50_000) // one)).encode()
    prefix = len(head) + len(filler) + len(b"S0,5,3,1.5,0.3,0.15,0.05,60,30,6,3,1,")
    pad = 1024 * 1024 - 1 - prefix
    assert 0 < pad < 100_000
    last = ("S0,5,3,1.5,0.3,0.15,0.05,60,30,6,3,1," + "a" * pad + "µ\n").encode()  # µ (C2 B5) straddles 1 MiB
    data = head + filler + last
    assert data[1024 * 1024 - 1 : 1024 * 1024 + 1] == "µ".encode()
    ref = read_reference(write(tmp_path, data))
    assert ref.encoding == "utf-8" and ref.table.height == (1024 * 1024 - 50_000) // one + 1


def test_cp1252_and_utf8_bom_still_read(tmp_path):
    text = HEADER + ",Nickname\n" + row("S1") + ",Zürich µ\n"
    assert read_reference(write(tmp_path, text.encode("cp1252"), "a.csv")).encoding == "cp1252"
    assert read_reference(write(tmp_path, text.encode("utf-8-sig"), "b.csv")).encoding == "utf-8"


@pytest.mark.parametrize(
    "data, fragment",
    [
        (GOOD.replace(b"S1", b"S\x001"), "line 2: NUL byte at offset"),
        ("\ufeff".encode("utf-16-le") + GOOD.decode().encode("utf-16-le"), "UTF-16 text (byte-order mark FF FE)"),
        (GOOD.decode().encode("utf-16-le"), "NUL byte at offset 1"),  # UTF-16 without BOM
        (b"PK\x03\x04" + b"\x00" * 100, "a ZIP archive (an Excel workbook?)"),
        (b"", "the reference file is empty"),
    ],
)
def test_binary_files_are_not_read_as_text(tmp_path, data, fragment):
    assert fragment in _refused(write(tmp_path, data))


# --- size, shape, things that are not files ------------------------------------------------------------


def test_too_large_file_is_refused_before_reading(tmp_path):
    p = tmp_path / "XN.csv"
    with open(p, "wb") as f:
        f.write(GOOD)
        f.truncate(MAX_REFERENCE_BYTES + 1)  # sparse: no disk, no time
    msg = _refused(p)
    assert "above the 512 MiB wbcv reads as a reference file" in msg


def test_fifo_device_and_directory_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "XN.csv"
    os.mkfifo(fifo)
    assert "not a regular file" in _refused(fifo)
    assert "not a regular file" in _refused(tmp_path)
    with pytest.raises(WbcvError, match="not a regular file"):
        read_reference("/dev/zero")
    with pytest.raises(WbcvError, match="reference file does not exist"):
        read_reference(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            HEADER + "\n" + row("S1") + "," + "9" * (MAX_LINE_CHARS + 10) + "\n",
            f"line 2: longer than {MAX_LINE_CHARS:,}",
        ),
        ("x" * (MAX_LINE_CHARS + 10), f"line 1: longer than {MAX_LINE_CHARS:,}"),  # one line, no newline at all
        (HEADER + "\n" + 'S1,"' + "5" * 200_000 + '"\n', "line 2: not readable as CSV: field larger than field limit"),
        (HEADER + "\n" + 'S1,"' + "5\n" * 70_000, "not readable as CSV: field larger than field limit"),  # open quote
        ("preamble\n" * (MAX_PREAMBLE_LINES + 5) + HEADER + "\n" + row("S1") + "\n", "no header row found"),
    ],
)
def test_lines_fields_and_preambles_that_cannot_be_an_export(tmp_path, text, fragment):
    assert fragment in _refused(write(tmp_path, text))


@pytest.mark.slow
def test_reading_is_streamed_python_memory_does_not_grow_with_the_file(tmp_path):
    """tracemalloc sees the Python objects (lines, rows, dicts), the part that grew with the file."""

    def peak(n_rows: int) -> int:
        p = write(tmp_path, HEADER + "\n" + "".join(row(f"S{i:07d}") + "\n" for i in range(n_rows)), f"{n_rows}.csv")
        tracemalloc.start()
        read_reference(p)
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return result

    small, large = peak(5_000), peak(15_000)  # one batch of rows, then three
    assert large < 1.5 * small, (small, large)


# --- rows that do not fit the header ------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, reason",
    [
        ("S2,5.0,3.0,1.5", "short row: 4 fields but the header has 12"),
        ("S2,5.0,3.0,1.5,0.3,0.15,0.05,60,30,6,3", "short row: 11 fields but the header has 12"),
        ("S2,5.0,3.0,1.5,0.3,0.15,0.05,60,30,6,3,1,,7", "long row: 14 fields but the header has 12"),
        ("S2,5,0,3.0,1.5,0.3,0.15,0.05,60,30,6,3,1", "long row: 13 fields but the header has 12"),  # decimal comma
    ],
)
def test_short_and_long_rows_are_excluded_with_the_reason(tmp_path, line, reason):
    ref = read_reference(write(tmp_path, HEADER + "\n" + row("S1") + "\n" + line + "\n"))
    assert ref.table["sample_id"].to_list() == ["S1"]  # the broken row gives no values at all
    (ex,) = ref.excluded.iter_rows(named=True)
    assert ex["source_row"] == 3 and ex["sample_id"] == "S2" and ex["reason"].startswith(reason), ex


def test_plain_csv_short_and_long_rows_are_excluded_too(tmp_path):
    text = "sample_id,WBC,NEUT#\nA,5,3\nB,5\nC,5,3,9\nD,5,3,,\n"
    ref = read_reference(write(tmp_path, text))
    assert ref.table["sample_id"].to_list() == ["A", "D"]  # D: trailing empty fields are layout
    reasons = dict(zip(ref.excluded["sample_id"], ref.excluded["reason"], strict=True))
    assert reasons["B"].startswith("short row: 2 fields but the header has 3")
    assert reasons["C"].startswith("long row: 4 fields but the header has 3")


def test_trailing_separators_and_unnamed_trailing_columns_are_layout(tmp_path):
    text = HEADER + ",,\n" + row("S1") + "\n" + row("S2") + ",,,,\n"
    ref = read_reference(write(tmp_path, text))
    assert ref.table["sample_id"].to_list() == ["S1", "S2"] and ref.excluded.height == 0


def test_a_file_of_only_broken_rows_says_why_nothing_was_found(tmp_path):
    msg = _refused(write(tmp_path, HEADER + "\nS1,5\nS2,5\nS3,5,3\n"))
    assert "no sample measurements found" in msg and "3 rows excluded, e.g. row 2: short row: 2 fields" in msg


# --- values that contradict each other ------------------------------------------------------------------


def ref_row(**values: float) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in values.items():
        q = k.replace("_pct", "%").replace("_n", "#")
        out[q], out[f"{q} status"] = v, "ok"
    return out


@pytest.mark.parametrize(
    "values, fragment",
    [
        # the five percentages: a typo (600 for 60.0), a missing class, all zero
        (dict(NEUT_pct=600, LYMPH_pct=30, MONO_pct=6, EO_pct=3, BASO_pct=1), "percentages sum to 640"),
        (dict(NEUT_pct=60, LYMPH_pct=3, MONO_pct=6, EO_pct=3, BASO_pct=1), "percentages sum to 73"),
        (dict(NEUT_pct=0, LYMPH_pct=0, MONO_pct=0, EO_pct=0, BASO_pct=0), "percentages sum to 0"),
        (dict(NEUT_pct=90, LYMPH_pct=70), "NEUT% + LYMPH% = 160 %, above 100"),
        (dict(NEUT_pct=60, LYMPH_pct=30, MONO_pct=6, EO_pct=3, BASO_pct=1, IG_pct=150), "IG% is 150, above 100"),
        # WBC 0 with a differential
        (dict(WBC=0, NEUT_n=3.0), "WBC is 0 but NEUT# 3"),
        (dict(WBC=0, NEUT_pct=60, LYMPH_pct=40), "WBC is 0 but NEUT% 60, LYMPH% 40"),
        # parts above the total
        (dict(WBC=6.1, NEUT_n=38.0), "NEUT# 38 above the WBC 6.1"),
        (dict(WBC=6.1, IG_n=6.5), "IG# 6.5 above the WBC 6.1"),
        (dict(WBC=6.0, NEUT_n=4.0, LYMPH_n=3.0), "NEUT# + LYMPH# = 7, above the WBC 6"),
        # the five parts far below the total (a count shifted by a decimal)
        (dict(WBC=5, NEUT_n=0.3, LYMPH_n=1.5, MONO_n=0.3, EO_n=0.15, BASO_n=0.05), "= 2.3, below the WBC 5"),
    ],
)
def test_implausible_values_are_named(values, fragment):
    why = implausibility(ref_row(**values))
    assert why is not None and fragment in why, why


@pytest.mark.parametrize(
    "values",
    [
        dict(NEUT_pct=60, LYMPH_pct=30, MONO_pct=6, EO_pct=3, BASO_pct=1),
        dict(NEUT_pct=58, LYMPH_pct=30, MONO_pct=6, EO_pct=3, BASO_pct=1, IG_pct=2),  # IG counted beside NEUT
        dict(NEUT_pct=60, LYMPH_pct=30, MONO_pct=6, EO_pct=3, BASO_pct=1, IG_pct=2),  # IG inside NEUT
        dict(NEUT_pct=60 + PERCENT_SUM_TOLERANCE, LYMPH_pct=30, MONO_pct=6, EO_pct=3, BASO_pct=1),  # at the tolerance
        dict(NEUT_pct=60, LYMPH_pct=40),
        dict(WBC=0, NEUT_n=0, LYMPH_n=0),  # 0 everywhere: the zero-reference rule decides
        dict(WBC=5, NEUT_n=5 + PART_TOLERANCE_ABS),  # rounding
        dict(WBC=5, NEUT_n=3, LYMPH_n=1.5, MONO_n=0.3, EO_n=0.15, BASO_n=0.05),
        dict(WBC=5, NEUT_n=2.9, LYMPH_n=1.5, MONO_n=0.3, EO_n=0.15, BASO_n=0.05, IG_n=0.1),
        dict(WBC=5, NEUT_n=30),  # NEUT# marked no result below: only 'ok' values are checked
    ],
)
def test_plausible_values_pass(values):
    r = ref_row(**values)
    if values.get("NEUT_n") == 30:
        r["NEUT# status"] = "no result"
    assert implausibility(r) is None


def _sealed_run(tmp_path: Path, ids: list[str]) -> Path:
    """An inference run holding only counts (60 % N, 30 % L, 6 % M, 3 % E, 1 % B), as `wbcv infer` seals it."""
    counts = counts_table(
        [
            {"sample_id": s, "neutrophil": 120, "lymphocyte": 60, "monocyte": 12, "eosinophil": 6, "basophil": 2}
            for s in ids
        ],
        model_id="m",
    )
    runs = tmp_path / "runs"
    (tmp_path / "batch").mkdir(exist_ok=True)
    work, _ = WorkingRun.open(runs, "hostile0" * 2, {"run_id": "hostile-infer"})
    with work.locked():
        return work.seal(
            runs,
            "hostile-infer",
            {
                COUNTS_FILE: counts,
                PREDICTIONS_FILE: pl.DataFrame(schema=PREDICTION_SCHEMA),
                SKIPPED_FILE: pl.DataFrame(schema=SKIPPED_SCHEMA),
            },
            InferenceRecord(
                created_utc="2026-01-01T00:00:00+00:00",
                finished_utc="2026-01-01T00:00:01+00:00",
                batch=BatchRef(
                    path=(tmp_path / "batch").resolve(),
                    batch_id=None,
                    manifest="manifest.csv",
                    cell_labels=None,
                    inputs_sha256="0" * 64,
                    n_samples=len(ids),
                    n_files=0,
                    unlisted_dirs=(),
                ),
                model=ModelRef(id="injected", name="injected counts", sha256="0" * 64, path=tmp_path, input_size=0),
                parameters={},
                software=software_info(),
                summary=InferenceSummary(
                    n_samples=len(ids),
                    n_cells=0,
                    n_unclassified=0,
                    n_skipped_cells=0,
                    n_unlisted_folders=0,
                    resumed=False,
                    wall_seconds_last_session=0.0,
                ),
            ),
        )


#: (sample, row as written, reason fragment): each broken in one way; S0 and S9 are sound.
BROKEN = [
    ("S1", row("S1", pct=(600, 30, 6, 3, 1)), "the differential percentages sum to 640"),
    ("S2", row("S2", wbc=0, counts=(3, 1.5, 0.3, 0.15, 0.05)), "WBC is 0 but NEUT# 3"),
    ("S3", row("S3", counts=(38, 1.5, 0.3, 0.15, 0.05)), "NEUT# 38 above the WBC 5"),
    ("S4", row("S4", counts=(0.3, 1.5, 0.3, 0.15, 0.05)), "below the WBC 5"),
    ("S5", "S5,5.0,3.0,1.5", "short row: 4 fields but the header has 12"),
    ("S6", row("S6") + ",7", "long row: 13 fields but the header has 12"),
]


@pytest.mark.slow  # starts the command line or a whole run
def test_broken_rows_reach_excluded_parquet_and_the_report_through_the_cli(tmp_path):
    ids = ["S0", *(b[0] for b in BROKEN), "S9"]
    inference = _sealed_run(tmp_path, ids)
    ref = write(tmp_path, "\n".join([HEADER, row("S0"), *(b[1] for b in BROKEN), row("S9")]) + "\n")
    proto = tmp_path / "p.yaml"
    proto.write_text(
        "protocol: {id: P, version: '1'}\nmeasurands: {NEUT#: {allowable_error_pct: 10}, "
        "NEUT%: {allowable_error_pct: 10}}\nacceptance: {required_coverage: 0.5}\n"
    )
    r = run_wbcv("compare", str(inference), "--reference", str(ref), "--protocol", str(proto), timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    (cmp_run,) = [p for p in (tmp_path / "runs").iterdir() if "-compare-" in p.name]
    excluded = pl.read_parquet(cmp_run / EXCLUDED_FILE)
    for sid, _, fragment in BROKEN:
        rows = excluded.filter(pl.col("sample_id") == sid)
        assert rows.height > 0 and all(fragment in why for why in rows["reason"]), (sid, rows["reason"].to_list())
        if sid in ("S5", "S6"):  # the parser's exclusion, listed once (not also "not in the reference file")
            assert rows.height == 1 and rows["measurand"][0] is None
        else:  # a whole sample: one row per measurand, with the value the implausible reference would give
            assert sorted(rows["measurand"]) == ["NEUT#", "NEUT%"]
            assert all(why.startswith("implausible reference values (row ") for why in rows["reason"])
    wbc0 = excluded.filter((pl.col("sample_id") == "S2") & (pl.col("measurand") == "NEUT#")).row(0, named=True)
    assert wbc0["error_pct"] == -100.0  # what comparing it would have reported
    compared = pl.read_parquet(cmp_run / "comparison.parquet")
    assert sorted(set(compared["sample_id"])) == ["S0", "S9"]
    html = render_html(load_report_data(cmp_run))
    for _, _, fragment in BROKEN:
        assert fragment in html, fragment


def test_implausible_row_is_judged_after_the_rerun_rule(tmp_path):
    ref = read_reference(
        write(
            tmp_path,
            "Sample No.,Date,Time,WBC(10^3/uL),NEUT#(10^3/uL)\nA,2026/01/01,08:00,5,38\nA,2026/01/01,09:00,5,3\n",
        )
    )
    counts = counts_table([{"sample_id": "A", "neutrophil": 60, "lymphocyte": 40}], model_id="m")
    for rule, kept in (("last", True), ("first", False)):
        p = tmp_path / f"{rule}.yaml"
        p.write_text(
            "protocol: {id: P, version: '1'}\nmeasurands: {NEUT#: {allowable_error_pct: 10}}\n"
            f"rerun_rule: {rule}\n"
        )
        result = compare(counts, ref, load_protocol(p))
        assert (result.table.height == 1) is kept
        if not kept:
            assert (
                "implausible reference values (row 2): NEUT# 38 above the WBC 5" in result.excluded["reason"].to_list()
            )


@pytest.mark.slow  # starts the command line or a whole run
@pytest.mark.parametrize(
    "data, fragment",
    [
        (GOOD + b"S2,\x81\n", "is not Windows-1252 (cp1252)"),
        (GOOD.replace(b"S1", b"S\x001"), "NUL byte"),
        (HEADER.encode() + b"\n" + b"9" * (MAX_LINE_CHARS + 5), "longer than"),
        (b"PK\x03\x04zip", "ZIP archive"),
    ],
)
def test_cli_refuses_broken_reference_files(tmp_path, data, fragment):
    inference = _sealed_run(tmp_path, ["S1"])
    ref = write(tmp_path, data)
    proto = tmp_path / "p.yaml"
    proto.write_text("protocol: {id: P, version: '1'}\nmeasurands: {NEUT#: {allowable_error_pct: 10}}\n")
    r = run_wbcv("compare", str(inference), "--reference", str(ref), "--protocol", str(proto), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr) < MAX_MESSAGE, r.stderr[:2000]
    assert fragment in r.stderr and str(ref) in r.stderr
