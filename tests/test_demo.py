"""`make demo`'s computation, small: simulate a study from real cells and run the whole validation."""

from __future__ import annotations

import json

from tests.conftest import PBC_DIR
from wbcv.base.runstore import read_run_record
from wbcv.fixtures.demo import main
from wbcv.validation.integrity import verify_record
from wbcv.validation.plan import read_plan
from wbcv.validation.study import load_comparison


def test_demo_runs_the_whole_validation(tmp_path, capsys):
    demo = tmp_path / "demo"
    args = ["--cells", str(PBC_DIR), "--out", str(demo), "--samples", "8", "--cells-per-slide", "40", "--no-serve"]
    rc = main([*args, "--pass-samples", "3", "--pass-cells", "40"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OVERALL:" in out and "demo: computation finished" in out
    runs = [p for p in (demo / "runs").iterdir() if not p.name.startswith(".")]
    kinds = sorted(read_run_record(p).kind for p in runs)
    assert kinds == ["comparison", "comparison", "inference", "inference", "precision", "qualitative"]
    for run in runs:
        if read_run_record(run).kind != "inference":
            assert f"PDF: {run / 'report' / 'report.pdf'}" in out and verify_record(run).intact
    assert read_plan(demo / "plan").strata == {"normal": 20, "abnormal": 40, "leukopenic": 10}
    planned = [load_comparison(p) for p in runs if "-compare-" in p.name]
    assert sorted(r.inputs.plan is not None for r in planned) == [False, True]
    assert sorted(set(r.protocol.measurands) == {"NEUT#", "NEUT%"} for r in planned) == [False, True]
    # 6. the validation file: the plan and a section per study, citing each run
    manifest = json.loads((demo / "validation-file" / "manifest.json").read_text())
    studies = {p.name for p in runs if read_run_record(p).kind != "inference"}
    assert set(manifest["runs"]) == studies and manifest["plan_manifest_sha256"] is not None
    html = (demo / "validation-file" / "validation_file.html").read_text()
    for title in ("1. Validation plan", "Precision study", "Flag agreement study", "counting floor"):
        assert title in html
    assert "claim repeatability SD" in out  # the precision step verifies the demo's NEUT% claim (EP15-A3 UVL)


def test_demo_without_a_library_says_how_to_give_one(tmp_path, capsys):
    assert main(["--cells", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    assert "make demo CELLS=" in capsys.readouterr().err


def test_demo_without_cells_uses_phantoms_and_the_phantom_model(tmp_path, capsys):
    args = ["--out", str(tmp_path / "demo"), "--samples", "6", "--cells-per-slide", "120", "--phantoms-per-class", "20"]
    rc = main([*args, "--pass-samples", "3", "--pass-cells", "120", "--no-serve"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "phantom cells drawn" in out and "model phantom-res2net-tiny@" in out and "OVERALL:" in out
