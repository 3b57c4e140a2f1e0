"""The operating-domain check (``wbcv.inference.domain``): profile storage and tamper refusal, the
statistic's properties, the threshold's false-alarm rate on held-out PBC slides, the run record's
``domain`` keys, counts.parquet's ``domain_score``, and the protocol's ``require_in_domain``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from tests.conftest import REPO
from tests.dashboard_support import PROTOCOL_TEXT
from wbcv.base.errors import WbcvError
from wbcv.base.records import DomainCheck
from wbcv.base.tables import COUNTS_FILE
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.cli import EXIT_FAILED_ACCEPTANCE, EXIT_OK
from wbcv.cli import main as wbcv_main
from wbcv.dashboards.app import _verdict_table
from wbcv.dashboards.data import RunCatalog
from wbcv.fixtures.phantom import PHANTOM_MODEL, write_phantom_library
from wbcv.fixtures.simulator import simulate_study
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.inference.artifact import CARD_FILE, load_artifact, resolve_model_path
from wbcv.inference.domain import (
    DOMAIN_FILE,
    MIN_CELLS,
    DomainProfile,
    check,
    feature_cells,
    image_cells,
    resample_slides,
    save_profile,
    score,
    trimmed_statistics,
)
from wbcv.inference.domain_fit import read_split, split_sample
from wbcv.inference.library import read_cell_library
from wbcv.inference.runner import run_inference
from wbcv.inference.slideset import read_slide_set
from wbcv.validation.protocol import load_protocol
from wbcv.validation.report import load_report_data, render_html
from wbcv.validation.verdict import domain_failure

PBC = REPO.parent / "shared" / "data" / "pbc"


def flat_profile(n_features: int, threshold: float) -> DomainProfile:
    """A profile whose distances are plain squared norms (zero means, identity precision)."""
    c = len(CELL_CLASSES)
    return DomainProfile(
        np.zeros((c, n_features), np.float32),
        np.eye(n_features, dtype=np.float32),
        np.zeros((c, 3), np.float32),
        np.eye(3, dtype=np.float32),
        False,
        np.zeros((2, c)),
        np.ones((2, c)),
        np.zeros(2),
        np.ones(2),
        threshold,
    )


def attach(model_dir: Path, profile: DomainProfile) -> None:
    card = json.loads((model_dir / CARD_FILE).read_text())
    card["domain_profile"] = save_profile(profile, model_dir, {})
    (model_dir / CARD_FILE).write_text(json.dumps(card, indent=2))


def copy_model(src: Path | str, dst: Path) -> Path:
    shutil.copytree(resolve_model_path(src), dst)
    return dst


# --- storage ---------------------------------------------------------------------------------------


def test_a_profile_reads_back_and_a_changed_or_missing_file_is_refused(model_dir, tmp_path):
    assert load_artifact(model_dir).domain is None  # an artifact without a profile still loads
    m = copy_model(model_dir, tmp_path / "m")
    n_features = load_artifact(m).net.backbone.num_features
    profile = flat_profile(n_features, 2.5)
    attach(m, profile)
    loaded = load_artifact(m).domain
    assert loaded is not None and loaded.threshold == 2.5 and not loaded.use_diameter
    assert np.array_equal(loaded.feature_precision, profile.feature_precision)
    assert json.loads((m / CARD_FILE).read_text())["domain_profile"]["file"] == DOMAIN_FILE

    data = bytearray((m / DOMAIN_FILE).read_bytes())
    data[-10] ^= 0xFF
    (m / DOMAIN_FILE).write_bytes(bytes(data))
    with pytest.raises(WbcvError, match=r"domain\.npz: sha256 .* does not match the model card's domain_profile"):
        load_artifact(m)
    (m / DOMAIN_FILE).unlink()
    with pytest.raises(WbcvError, match=r"domain profile file domain\.npz named in the card is missing"):
        load_artifact(m)


def test_the_bundled_model_carries_a_verified_profile():
    model = load_artifact(None)
    assert model.domain is not None and model.card["domain_profile"]["threshold"] == model.domain.threshold


# --- the statistic -----------------------------------------------------------------------------------


def test_slides_are_resampled_at_their_size_with_every_class_drawn():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    slides = resample_slides(labels, 150, 200, rng)
    assert all(len(s) == 150 for s in slides)
    share = np.mean([np.mean(labels[s] == 0) for s in slides])
    assert 0.55 < share < 0.65  # DIFFERENTIAL: 60 % neutrophils


def test_too_few_cells_give_no_score_and_missing_statistics_are_not_scored():
    d = np.ones(MIN_CELLS)
    assert trimmed_statistics(d[:-1], d[:-1]) is None
    assert trimmed_statistics(d, np.where(np.arange(MIN_CELLS) == 0, np.nan, 1.0)) is None
    assert trimmed_statistics(d, d) is not None


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0, 100), min_size=MIN_CELLS, max_size=120),
    st.floats(0.5, 50),
    st.randoms(use_true_random=False),
)
def test_the_score_ignores_cell_order_and_rises_when_every_cell_moves_away(values, shift, rnd):
    profile = flat_profile(4, 3.0)
    f = np.array(values)
    i = f[::-1].copy()
    perm = list(range(len(f)))
    rnd.shuffle(perm)
    base = score(profile, f, i)
    assert base is not None
    assert score(profile, f[perm], i[perm]) == pytest.approx(base)
    assert score(profile, f + shift, i + shift) > base


def test_a_slide_far_from_the_profile_is_listed_and_the_batch_judged_on_all_cells():
    profile = flat_profile(2, 3.0)
    ids = np.array(["A"] * 60 + ["B"] * 60 + ["C"] * 10)
    fd = np.concatenate([np.full(60, 1.0), np.full(60, 9.0), np.full(10, 50.0)])
    v = check(profile, ids, fd, np.ones(130), ["A", "B", "C", "D"])
    assert v.slides_out_of_domain == ("B",)
    assert v.slide_scores["C"] is None and v.slide_scores["D"] is None  # too few / no cells
    assert v.verdict == "out_of_domain"  # trimmed mean over all 130 cells is above 3
    none = check(None, ids, fd, fd, ["A"])
    assert none.verdict == "not_checked" and none.score is None and none.slide_scores == {"A": None}


# --- the threshold on held-out PBC slides ----------------------------------------------------------


@pytest.mark.slow
def test_the_threshold_passes_at_least_99_percent_of_held_out_pbc_test_slides():
    """Threshold from the validation split; here 1000 slides of 100 (and 200) cells resampled from the
    test split: the false-alarm rate must not be significantly above 1 % (one-sided binomial, 1 %)."""
    model = load_artifact(None)
    assert model.domain is not None
    model_dir = model.path
    test = split_sample(model, read_split(model_dir, model.card), PBC, "test").scored(model.domain.use_diameter)
    fd, nearest = feature_cells(model.domain, test.features)
    idist = image_cells(model.domain, test.surround_lab, test.diameter_px, nearest)
    rng = np.random.default_rng(123)
    for n in (100, 200):
        slides = resample_slides(test.labels, n, 1000, rng)
        flagged = sum(score(model.domain, fd[s], idist[s]) > model.domain.threshold for s in slides)  # type: ignore[operator]
        assert binomtest(int(flagged), 1000, 0.01, alternative="greater").pvalue > 0.01, (n, flagged)
    assert score(model.domain, fd, idist) < model.domain.threshold  # the whole test split as one batch
    # an abnormal differential is still inside the domain: slides of a monocytosis (M 25 %)
    slides = resample_slides(test.labels, 100, 1000, rng, differential=(0.45, 0.25, 0.25, 0.04, 0.01))
    flagged = sum(score(model.domain, fd[s], idist[s]) > model.domain.threshold for s in slides)  # type: ignore[operator]
    assert binomtest(int(flagged), 1000, 0.01, alternative="greater").pvalue > 0.01, flagged


# --- in a run ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def profiled_model(model_dir, tmp_path_factory):
    m = copy_model(model_dir, tmp_path_factory.mktemp("profiled") / "m")
    net = load_artifact(m).net
    # threshold between the two test batches below: centre/scale chosen from the flat distances
    attach(m, flat_profile(net.backbone.num_features, 1e12))
    return m


def test_a_run_records_the_domain_check_per_batch_and_per_slide(profiled_model, pbc_cells, tmp_path):
    batch = build_slide_set(pbc_cells, tmp_path / "batch", n_samples=3, cells_per_slide=MIN_CELLS, seed=2)
    result = run_inference(read_slide_set(batch), load_artifact(profiled_model), tmp_path / "runs", progress=False)
    doc = json.loads((result.run_dir / "run.json").read_text())
    assert set(doc["domain"]) == {"verdict", "score", "threshold", "method", "slides_out_of_domain"}
    assert doc["domain"]["verdict"] == "in_domain" and doc["domain"]["threshold"] == 1e12
    assert isinstance(doc["domain"]["score"], float) and doc["domain"]["slides_out_of_domain"] == []
    counts = pl.read_parquet(result.run_dir / COUNTS_FILE)
    assert counts.schema["domain_score"] == pl.Float64 and counts["domain_score"].null_count() == 0


def test_a_run_without_a_profile_is_not_checked(model_dir, pbc_cells, tmp_path):
    batch = build_slide_set(pbc_cells, tmp_path / "batch", n_samples=2, cells_per_slide=10, seed=2)
    result = run_inference(read_slide_set(batch), load_artifact(model_dir), tmp_path / "runs", progress=False)
    assert result.record.domain.verdict == "not_checked" and result.record.domain.score is None
    doc = json.loads((result.run_dir / "run.json").read_text())
    assert doc["domain"]["verdict"] == "not_checked"
    counts = pl.read_parquet(result.run_dir / COUNTS_FILE)
    assert counts.schema["domain_score"] == pl.Float64 and counts["domain_score"].null_count() == 2


def test_an_old_run_record_reads_as_not_checked():
    doc = json.loads((REPO / "tests" / "records" / "inference-run.json").read_text())
    assert "domain" not in doc
    from wbcv.base.records import parse_record

    assert parse_record(doc, "old/run.json").domain.verdict == "not_checked"  # type: ignore[union-attr]


# --- the protocol's require_in_domain ----------------------------------------------------------------


def test_require_in_domain_is_read_and_a_wrong_value_named(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(PROTOCOL_TEXT + "\nrequire_in_domain: true\n")
    protocol = load_protocol(p)
    assert protocol.require_in_domain is True
    out = DomainCheck(verdict="out_of_domain", score=9.0, threshold=3.0, method="m", slides_out_of_domain=("S1",))
    assert "batch out of domain: score 9.00 above the model's threshold 3.00" in str(domain_failure(out, protocol))
    assert domain_failure(DomainCheck(), protocol) is not None  # not shown in domain: fails too
    assert domain_failure(DomainCheck(verdict="in_domain", score=0.0, threshold=3.0, method="m"), protocol) is None
    p.write_text(PROTOCOL_TEXT + "\nrequire_in_domain: yes please\n")
    with pytest.raises(WbcvError, match=r"require_in_domain: is .*expected true or false"):
        load_protocol(p)


@pytest.mark.slow
def test_an_out_of_domain_batch_fails_a_protocol_that_requires_the_domain(tmp_path, capsys):
    library = write_phantom_library(tmp_path / "library", 12, seed=1)
    study = tmp_path / "study"
    simulate_study(read_cell_library(library), study, 6, 20, seed=3)
    model = copy_model(PHANTOM_MODEL, tmp_path / "phantom")
    attach(model, flat_profile(load_artifact(model).net.backbone.num_features, -1e12))  # everything is out
    loose = PROTOCOL_TEXT.replace("min_cells: 100", "min_cells: 10").replace(
        "allowable_error_pct: 10", "allowable_error_pct: 1000"
    )
    plain, strict = tmp_path / "plain.yaml", tmp_path / "strict.yaml"
    plain.write_text(loose)
    strict.write_text(loose + "\nrequire_in_domain: true\n")
    common = ["--reference", str(study / "XN_SAMPLE.csv"), "--model", str(model), "--no-progress"]
    assert wbcv_main(["run", str(study), "--protocol", str(plain), "--out", str(tmp_path / "r1"), *common]) == EXIT_OK
    err = capsys.readouterr().err
    assert "out of domain" in err
    rc = wbcv_main(["run", str(study), "--protocol", str(strict), "--out", str(tmp_path / "r2"), *common])
    assert rc == EXIT_FAILED_ACCEPTANCE
    assert "FAIL: batch out of domain" in capsys.readouterr().out
    compare = next(p for p in (tmp_path / "r2").iterdir() if "-compare-" in p.name)
    verdict = json.loads((compare / "verdict.json").read_text())
    assert verdict["overall"] == "fail" and verdict["failure_reasons"][0].startswith("batch out of domain")
    assert verdict["domain"]["verdict"] == "out_of_domain"
    # the report opens with the banner; the dashboard's runs list and run header show it
    html = render_html(load_report_data(compare))
    title_page = html[html.index('<div class="title-page">') :][:400]
    assert "OUT OF DOMAIN" in title_page
    catalog = RunCatalog(tmp_path / "r2")
    assert [s.domain for s in catalog.summaries()] == ["out_of_domain"]
    header = str(_verdict_table(catalog.get(catalog.summaries()[0].run_id), "NEUT#"))
    assert "OUT OF DOMAIN" in header


def test_wbcv_profile_adds_a_verified_profile_from_the_split_file(model_dir, tmp_path, capsys):
    m = copy_model(model_dir, tmp_path / "m")
    split = read_split(resolve_model_path(None), {})  # the bundled model's split: real PBC paths and labels
    rows = pl.concat(
        [
            split.filter((pl.col("split") == w) & (pl.col("label") == c)).head(24)
            for w in ("train", "validation")
            for c in CELL_CLASSES
        ]
    )
    rows.filter(pl.col("label") != "basophil").write_csv(m / "split.csv")
    assert wbcv_main(["profile", str(m), "--cells", str(PBC)]) == 2
    assert "hold no usable cell of class(es) ['basophil']" in capsys.readouterr().err
    rows.write_csv(m / "split.csv")
    assert wbcv_main(["profile", str(m), "--cells", str(PBC)]) == EXIT_OK
    assert "domain profile added" in capsys.readouterr().out
    section = json.loads((m / CARD_FILE).read_text())["domain_profile"]
    model = load_artifact(m)
    assert model.domain is not None and section["threshold"] == model.domain.threshold
    assert section["fitted_on"]["train_cells"] == 120
    (m / "split.csv").unlink()
    assert wbcv_main(["profile", str(m), "--cells", str(PBC)]) == 2
    assert "split file split.csv is missing" in capsys.readouterr().err


@pytest.mark.slow  # two real batches through the bundled model and its profile
def test_the_bundled_model_finds_pbc_test_cells_in_domain_and_tecom_cells_out(pbc_cells, tecom_dir, tmp_path, capsys):
    """The issue's acceptance, on real cells: a batch of held-out PBC test cells is in domain; a
    batch of the other laboratory's (Tecom) cells is out of domain, with the warning line."""
    model = load_artifact(None)
    test_paths = set(read_split(model.path, model.card).filter(pl.col("split") == "test")["path"].to_list())
    test_cells = [c for c in pbc_cells if c.path.relative_to(PBC).as_posix() in test_paths]
    for name, cells in (("pbc", test_cells), ("tecom", read_cell_library(tecom_dir))):
        batch = build_slide_set(cells, tmp_path / name, n_samples=2, cells_per_slide=100, seed=4)
        assert wbcv_main(["infer", str(batch), "--out", str(tmp_path / f"runs-{name}"), "--no-progress"]) == EXIT_OK
        run = next((tmp_path / f"runs-{name}").iterdir())
        domain = json.loads((run / "run.json").read_text())["domain"]
        err = capsys.readouterr().err
        if name == "pbc":
            assert domain["verdict"] == "in_domain" and domain["slides_out_of_domain"] == [], domain
            assert "out of domain" not in err
        else:
            assert domain["verdict"] == "out_of_domain" and len(domain["slides_out_of_domain"]) == 2, domain
            assert "out of domain" in err
