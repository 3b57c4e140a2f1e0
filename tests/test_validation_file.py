"""`wbcv file`: the validation file, one document with a section per study (validation/validation_file.py)."""

from __future__ import annotations

import html as html_module
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.test_report import study_run  # noqa: F401  (the module-scoped simulated study run)
from wbcv.base.atomic import sha256_file
from wbcv.base.errors import WbcvError
from wbcv.cli import EXIT_INPUT_ERROR, EXIT_OK, main
from wbcv.validation.plan import write_plan
from wbcv.validation.study import load_comparison, run_comparison
from wbcv.validation.study_run import RESULT_FILE, precision_run, qualitative_run, study_result
from wbcv.validation.validation_file import FILE_HTML, FILE_PDF, gather, render_file_html, write_validation_file

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"


def _studies(tmp_path: Path) -> tuple[Path, Path]:
    _, precision = precision_run(SAMPLES / "precision.csv", tmp_path / "runs")
    _, flags = qualitative_run(SAMPLES / "flags.csv", tmp_path / "runs")
    return precision.run_dir, flags.run_dir


def _text(html: str) -> str:
    return html_module.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def test_sections_in_order_with_their_figures_and_a_deterministic_html(tmp_path):
    precision, flags = _studies(tmp_path)
    plan, sections = gather([flags, precision], None)
    assert plan is None and [s.kind for s in sections] == ["precision", "qualitative"]
    html = render_file_html(plan, sections)
    assert html == render_file_html(*gather([flags, precision], None))  # no clock, no random id
    text = _text(html)
    assert "1. Precision study (CLSI EP05-A3 / EP15-A3)" in text and "2. Flag agreement study (CLSI EP12-A2)" in text
    result = study_result(type("R", (), {"run_dir": flags})())  # type: ignore[arg-type]
    first = result["flags"][0]
    assert f"{first['kappa']:.3f}" in text  # the flag's kappa as sealed
    assert sections[0].record_sha256 == sha256_file(precision / "run.json") and sections[0].record_sha256 in html
    assert "no report written yet" in text  # the runs have no report of their own yet: said, not hidden


def test_written_with_a_manifest_citing_every_run_and_never_over_a_folder(tmp_path, capsys):
    precision, flags = _studies(tmp_path)
    assert main(["report", str(precision)]) == EXIT_OK
    out = tmp_path / "file"
    assert main(["file", str(precision), str(flags), "--out", str(out)]) == EXIT_OK
    assert f"validation file: {out / FILE_HTML}" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {FILE_HTML, FILE_PDF}
    assert manifest["files"][FILE_PDF] == sha256_file(out / FILE_PDF)
    cited = manifest["runs"]
    assert cited[precision.name]["run_record_sha256"] == sha256_file(precision / "run.json")
    assert cited[precision.name]["report"]["manifest_sha256"] == sha256_file(precision / "report" / "manifest.json")
    assert cited[flags.name]["report"] is None
    assert main(["file", str(precision), "--out", str(out)]) == EXIT_INPUT_ERROR
    assert "never over one" in capsys.readouterr().err


def test_an_altered_run_is_refused_naming_it(tmp_path):
    precision, flags = _studies(tmp_path)
    doc = json.loads((flags / RESULT_FILE).read_text())
    doc["flags"][0]["true_positive"] += 1
    (flags / RESULT_FILE).chmod(0o644)
    flags.chmod(0o755)
    (flags / RESULT_FILE).write_text(json.dumps(doc))
    with pytest.raises(WbcvError, match=rf"{flags.name}.*altered after it was sealed"):
        write_validation_file([precision, flags], None, tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_bad_selections_are_refused(tmp_path):
    precision, _ = _studies(tmp_path)
    with pytest.raises(WbcvError, match="given twice"):
        gather([precision, precision], None)
    with pytest.raises(WbcvError, match="at least one run"):
        gather([], None)
    copy = tmp_path / "not-a-run"
    shutil.copytree(precision, copy)
    (copy / "run.json").chmod(0o644)
    (copy / "run.json").write_text("{}")
    with pytest.raises(WbcvError):
        gather([copy], None)


@pytest.mark.slow
def test_comparison_section_binds_the_plan_and_shows_floor_and_case_mix(study_run, tmp_path):  # noqa: F811
    record = load_comparison(study_run["compare"])
    protocol = record.inputs.protocol.path
    planned = tmp_path / "planned.yaml"
    planned.write_text(protocol.read_text().replace("required_coverage: 0.95", "required_coverage: 0.9"))
    write_plan(planned, tmp_path / "plan")
    result = run_comparison(
        study_run["infer"], record.inputs.reference.path, protocol, tmp_path / "runs", plan_dir=tmp_path / "plan"
    )
    plan, sections = gather([result.run_dir], tmp_path / "plan")
    (section,) = sections
    assert section.kind == "comparison" and section.outcome in ("PASS", "FAIL")
    text = _text(render_file_html(plan, sections))
    assert "made under this file's plan; WARNING: the protocol differs in 1 field(s)" in text
    assert "required_coverage: 0.9 (plan) → 0.95 (applied)" in text
    assert "counting floor" in text and "Case mix achieved" in text  # the simulator writes each sample's stratum
    for row in section.body["rows"]:
        assert row["measurand"] in text
    # the same run without the plan given to `wbcv file`: bound to another plan than the file's
    _, other = gather([result.run_dir], None)
    assert other[0].body["plan_binding"].startswith("made under another plan")
