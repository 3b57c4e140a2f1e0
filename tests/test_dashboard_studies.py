"""The dashboard's studies tab (dashboards/studies.py): the sealed precision and flag studies with their
figures, read from result.json only when its hash matches run.json."""

from __future__ import annotations

import json
from pathlib import Path

from wbcv.dashboards.app import create_app, studies_view
from wbcv.dashboards.data import RunCatalog
from wbcv.validation.study_run import RESULT_FILE, precision_run, qualitative_run, study_result

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"


def _text(component: object) -> str:
    return json.dumps(component.to_plotly_json(), default=lambda c: c.to_plotly_json())  # type: ignore[attr-defined]


def test_studies_are_listed_with_their_sealed_figures(tmp_path):
    _, p_run = precision_run(SAMPLES / "precision.csv", tmp_path)
    _, q_run = qualitative_run(SAMPLES / "flags.csv", tmp_path)
    catalog = RunCatalog(tmp_path)
    assert catalog.summaries() == []  # no comparison run: the studies are not comparison runs
    lines = {s.kind: s for s in catalog.studies()}
    assert set(lines) == {"precision", "qualitative"} and catalog.unreadable() == []
    neut = next(g for g in study_result(p_run)["groups"] if (g["sample"], g["measurand"]) == ("L1", "NEUT%"))
    cv = neut["components"][0]["cv_pct"]
    assert any(
        f.startswith("L1 NEUT% (n=80): repeatability CV") and f"{cv:.2f} %" in f for f in lines["precision"].figures
    )
    blasts = next(f for f in study_result(q_run)["flags"] if f["flag"] == "blasts")
    assert any(f"PPA {100 * blasts['ppa']['estimate']:.1f} %" in f for f in lines["qualitative"].figures)
    page = _text(studies_view(catalog)[0])
    assert p_run.run_dir.name in page and q_run.run_dir.name in page
    # the page itself is served with the tab (no comparison run needed)
    assert create_app(tmp_path).server.test_client().get("/_dash-layout").status_code == 200


def test_an_altered_result_shows_as_altered_without_figures(tmp_path):
    _, run = qualitative_run(SAMPLES / "flags.csv", tmp_path)
    path = run.run_dir / RESULT_FILE
    run.run_dir.chmod(0o755)
    path.chmod(0o644)
    doc = json.loads(path.read_text())
    doc["flags"][0]["ppa"]["estimate"] = 1.0
    path.write_text(json.dumps(doc))
    (line,) = RunCatalog(tmp_path).studies()
    assert line.figures == () and line.problem is not None and "altered" in line.problem


def test_no_study_says_so(tmp_path):
    (view,) = studies_view(RunCatalog(tmp_path))
    assert "no precision or qualitative study run" in _text(view)
