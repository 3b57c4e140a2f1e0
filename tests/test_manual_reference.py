"""The manual 400-cell differential as the reference (CLSI H20): pooled counts, Clopper–Pearson intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import binomtest

from wbcv.base.errors import WbcvError
from wbcv.base.tables import REFERENCE_FILE
from wbcv.cli import main
from wbcv.fixtures import analyzer_exports
from wbcv.fixtures.simulator import draw_samples
from wbcv.validation.reference import read_reference

REPO = Path(__file__).resolve().parent.parent
EXPORT = REPO / "fixtures" / "samples" / "results" / "differential.csv"
HEADER = "sample_id,examiner,slide,Segmented neutrophils,Band neutrophils,Lymphocytes,Monocytes,Eosinophils,Basophils,Blasts,Smudge cells\n"  # noqa: E501


def test_two_examiners_are_pooled_with_a_clopper_pearson_interval(tmp_path):
    ref = tmp_path / "manual.csv"
    ref.write_text(
        HEADER + "S1,A,1,100,10,60,20,6,2,2,5\nS1,B,2,105,5,62,18,7,3,0,1\nS2,A,1,0,0,0,0,0,0,3,1\n"
        ",B,1,1,1,1,1,1,1,0,0\n"
    )
    data = read_reference(ref)
    assert data.format == "manual-differential" and data.quantities == ("NEUT%", "LYMPH%", "MONO%", "EO%", "BASO%")
    (row,) = data.table.iter_rows(named=True)
    n = 220 + 122 + 38 + 13 + 5  # the five classes, bands with neutrophils; blasts and smudge cells apart
    assert (row["cells_counted"], row["cells_outside_five"], row["cells_excluded"], row["examiners"]) == (n, 2, 6, 2)
    assert row["NEUT%"] == pytest.approx(100 * 220 / n)
    assert sum(row[q] for q in data.quantities) == pytest.approx(100)
    exact = binomtest(13, n).proportion_ci(confidence_level=0.95, method="exact")
    assert (row["EO% ci_low"], row["EO% ci_high"]) == pytest.approx((100 * exact.low, 100 * exact.high))
    reasons = dict(zip(data.excluded["source_row"], data.excluded["reason"], strict=True))
    assert reasons == {4: "no cell of the five classes counted", 5: "no sample id or no examiner"}


def test_the_interval_is_rs_binom_test():
    # R 4.2: binom.test(9, 100)$conf.int = 0.04198360 0.16398226 (9 % of a 100-cell count)
    from wbcv.validation.agreement import clopper_pearson

    ci = clopper_pearson(9, 100)
    assert (ci.lower, ci.upper) == pytest.approx((0.04198360, 0.16398226), abs=1e-8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sample_id,examiner,Neutrophils,Hairy cells\nS1,A,10,3\n", r"column\(s\) 'Hairy cells' are not cell classes"),
        (
            "sample_id,examiner,Neutrophils,Lymphocytes\nS1,A,10.5,5\n",
            "row 2, column 'Neutrophils': '10.5' is not a cell",
        ),
        ("sample_id,examiner,Neutrophils,Lymphocytes\nS1,A,,5\n", "row 2, column 'Neutrophils': '' is not a cell"),
    ],
)
def test_bad_manual_counts_are_refused(tmp_path, text, message):
    ref = tmp_path / "manual.csv"
    ref.write_text(text)
    with pytest.raises(WbcvError, match=message):
        read_reference(ref)


def test_a_total_that_is_not_the_sum_is_refused(tmp_path):
    ref = tmp_path / "manual.csv"
    ref.write_text("sample_id,examiner,Neutrophils,Lymphocytes,Total\nS1,A,120,80,200\nS1,B,110,80,200\n")
    with pytest.raises(WbcvError, match="row 3: the total is 200 but the class counts sum to 190"):
        read_reference(ref)


def test_an_analyzer_export_compares_with_a_manual_reference(tmp_path, capsys):
    """Two examiners count 200 cells each of every simulated sample (multinomial on the truth)."""
    samples = draw_samples(analyzer_exports.N_SAMPLES, analyzer_exports.CELLS_PER_SLIDE, seed=analyzer_exports.SEED)
    rng = np.random.default_rng(11)
    lines = ["sample_id,examiner,slide,Neutrophils,Lymphocytes,Monocytes,Eosinophils,Basophils"]
    for s in samples:
        p = [s.true_fractions[c] for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")]
        for examiner, slide in (("A", 1), ("B", 2)):
            lines.append(f"{s.sample_id},{examiner},{slide}," + ",".join(map(str, rng.multinomial(200, p))))
    ref = tmp_path / "manual.csv"
    ref.write_text("\n".join(lines) + "\n")
    protocol = tmp_path / "p.yaml"
    protocol.write_text(
        "protocol: {id: MANUAL-REF, version: '1'}\nmeasurands:\n  NEUT%: {allowable_error_pct: 10, absolute_limit: 2}\n"
        "  LYMPH%: {allowable_error_pct: 10, absolute_limit: 2}\nexclusions: {min_cells: 100}\n"
    )
    code = main(
        ["compare", "--results", str(EXPORT), "--format", "csv", "--reference", str(ref), "--protocol", str(protocol),
         "--out", str(tmp_path / "runs")]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code in (0, 3), out.err
    (compare_dir,) = [p for p in (tmp_path / "runs").iterdir() if "-compare-" in p.name]
    table = pl.read_parquet(compare_dir / REFERENCE_FILE)
    assert table.height == len(samples) and (table["cells_counted"] == 400).all()
    assert {"NEUT% ci_low", "NEUT% ci_high"} <= set(table.columns)
    assert "NEUT%:" in out.out and "OVERALL" in out.out


def test_a_protocol_needing_counts_is_refused_before_anything_is_imported(tmp_path, capsys):
    ref = tmp_path / "manual.csv"
    ref.write_text("sample_id,examiner,Neutrophils,Lymphocytes\nSIM0007-00000,A,150,50\n")
    protocol = REPO / "fixtures" / "samples" / "protocol.yaml"  # NEUT# ...: needs the reference's WBC and counts
    code = main(
        ["compare", "--results", str(EXPORT), "--format", "csv", "--reference", str(ref), "--protocol", str(protocol),
         "--out", str(tmp_path / "runs")]
    )  # fmt: skip
    assert code == 2
    assert "needs column(s) the reference does not have: NEUT#" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
