"""The study simulator on real cells: deterministic, consistent with its truth, realistic reference."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.fixtures.simulator import draw_samples, simulate_study
from wbcv.inference.slideset import read_slide_set
from wbcv.validation.reference import read_reference


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def study(tmp_path_factory, pbc_cells) -> Path:
    out = tmp_path_factory.mktemp("sim") / "study"
    simulate_study(pbc_cells, out, n_samples=12, cells_per_slide=50, seed=7)
    return out


def test_same_seed_same_bytes_other_seed_other_study(study, pbc_cells, tmp_path):
    simulate_study(pbc_cells, tmp_path / "again", n_samples=12, cells_per_slide=50, seed=7)
    assert _digest(tmp_path / "again") == _digest(study)
    simulate_study(pbc_cells, tmp_path / "other", n_samples=12, cells_per_slide=50, seed=8)
    assert _digest(tmp_path / "other") != _digest(study)


def test_slides_labels_and_truth_agree(study):
    slides = read_slide_set(study)
    assert len(slides.samples) == 12 and all(len(s.images) == 50 for s in slides.samples)
    assert all(s.fields["imaged_volume_ul"] > 0 for s in slides.samples)
    truth = pl.read_csv(study / "truth.csv")
    labels = pl.read_csv(study / "cell_labels.csv")
    for row in truth.iter_rows(named=True):
        mine = labels.filter(pl.col("sample_id") == row["sample_id"])
        for c in CELL_CLASSES:
            assert int((mine["label"] == c).sum()) == row[f"slide_k_{c}"]
        assert sum(row[f"true_fraction_{c}"] for c in CELL_CLASSES) == pytest.approx(1, abs=1e-6)
        # the volumetric estimate from the cells found lies near the true WBC (Poisson noise only)
        assert 50 / row["imaged_volume_ul"] / 1000 == pytest.approx(row["true_wbc"], rel=0.6)


def test_reference_is_a_realistic_sysmex_export(study):
    ref = read_reference(study / "XN_SAMPLE.csv")
    assert ref.format == "sysmex-xn"
    assert sorted(ref.excluded["reason"].to_list()) == [
        "technical row (BACKGROUNDCHECK)",
        "technical row (QC-L1-24031)",
        "technical row (QC-L2-24032)",
    ]
    assert ref.table.height == 13 and ref.table["sample_id"].n_unique() == 12  # one rerun
    truth = pl.read_csv(study / "truth.csv")
    joined = ref.table.unique("sample_id", keep="first").join(truth, on="sample_id")
    # measured, not the truth: close to it, but not equal
    rel = (joined["NEUT%"] / (100 * joined["true_fraction_neutrophil"]) - 1).abs()
    assert rel.max() < 0.2 and rel.min() > 0


def test_refuses_a_non_empty_output_folder_and_missing_classes(study, pbc_cells):
    with pytest.raises(WbcvError, match="not empty"):
        simulate_study(pbc_cells, study, 1, 1)
    with pytest.raises(WbcvError, match="no images of"):
        simulate_study([c for c in pbc_cells if c.label != "basophil"], study.parent / "x", 1, 1)


def test_simulate_command(tmp_path):
    from tests.conftest import PBC_DIR, run_wbcv

    r = run_wbcv(
        "simulate",
        "--cells",
        str(PBC_DIR),
        "--samples",
        "3",
        "--cells-per-slide",
        "10",
        "--out",
        str(tmp_path / "s"),
        "--seed",
        "1",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "simulated 3 samples x 10 cells" in r.stdout and (tmp_path / "s" / "XN_SAMPLE.csv").is_file()


def test_study_config_from_yaml_changes_only_what_it_names(tmp_path):
    from wbcv.fixtures.simulator import StudyConfig, load_study_config

    sample = load_study_config(Path(__file__).resolve().parent.parent / "fixtures" / "samples" / "study.yaml")
    assert sample == StudyConfig()  # the documented example is the defaults, spelled out
    path = tmp_path / "study.yaml"
    path.write_text("pattern_weights: {neutropenia: 1.0, healthy: 0}\nreruns: 0\nanalyzer_cv: {basophil: 0.4}\n")
    cfg = load_study_config(path)
    assert cfg.pattern_weights["neutropenia"] == 1.0 and cfg.pattern_weights["healthy"] == 0.0
    assert cfg.reruns == 0 and cfg.analyzer_cv["basophil"] == 0.4 and cfg.analyzer_cv["neutrophil"] == 0.02
    assert draw_samples(20, 50, seed=1, config=cfg)[0].pattern != "healthy"


def test_study_config_problems_are_all_named(tmp_path):
    from wbcv.fixtures.simulator import load_study_config

    path = tmp_path / "bad.yaml"
    path.write_text(
        "pattern_weight: {healthy: 1}\nanalyzer_cv: {basofil: 0.1, monocyte: -1}\nreruns: two\nstart: yesterday\n"
    )
    with pytest.raises(WbcvError) as e:
        load_study_config(path)
    text = str(e.value)
    assert "pattern_weight: unknown key (did you mean 'pattern_weights'?)" in text
    assert "analyzer_cv.basofil: unknown name (did you mean 'basophil'?)" in text
    assert "analyzer_cv.monocyte: expected a number from 0 to 2, got -1" in text
    assert "reruns: expected a whole number" in text and "start: expected a date" in text
    assert text.count(str(path)) == 5


def test_simulate_cli_takes_a_config(tmp_path):
    from wbcv.cli import main
    from wbcv.fixtures.phantom import write_phantom_library

    library = write_phantom_library(tmp_path / "lib", 5)
    config = tmp_path / "study.yaml"
    config.write_text("pattern_weights: {eosinophilia: 1, healthy: 0}\n")
    args = ["simulate", "--cells", str(library), "--samples", "4", "--cells-per-slide", "20", "--seed", "2"]
    assert main([*args, "--out", str(tmp_path / "a"), "--config", str(config)]) == 0
    truth = (tmp_path / "a" / "truth.csv").read_text()
    assert truth.count("eosinophilia") == 4
    config.write_text("reruns: -1\n")
    assert main([*args, "--out", str(tmp_path / "b"), "--config", str(config)]) == 2
