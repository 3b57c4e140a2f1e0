"""Training on a small real subset: dedup and split rules, the loop, calibration, reproducibility,
and `wbcv evaluate` with an out-of-scope label."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import run_wbcv
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.artifact import load_artifact
from wbcv.inference.library import read_cell_library
from wbcv.inference.training import SPLIT_FILE, Recipe, prepare_data, train
from wbcv.validation.model_evaluation import EVALUATION_KEYS, evaluate_cells

QUICK = dataclasses.replace(Recipe(), epochs=2, batch_size=32, threads=2)


@pytest.fixture(scope="module")
def library(tmp_path_factory, pbc_cells) -> Path:
    """24 real cells per class in class folders, plus one within-class and one cross-class duplicate."""
    root = tmp_path_factory.mktemp("lib")
    per: dict[str, list] = {}
    for c in pbc_cells:
        per.setdefault(c.label, []).append(c)
    for label, cells in per.items():
        (root / label).mkdir()
        for c in cells[:24]:
            shutil.copyfile(c.path, root / label / c.path.name)
    shutil.copyfile(root / "basophil" / per["basophil"][0].path.name, root / "basophil" / "copy_of_first.jpg")
    shutil.copyfile(root / "monocyte" / per["monocyte"][0].path.name, root / "lymphocyte" / "mislabelled.jpg")
    return root


def test_dedup_merges_copies_and_drops_conflicting_labels(library):
    cells = read_cell_library(library)
    data = prepare_data(cells, QUICK, library)
    assert data.duplicates_merged == 1
    assert len(data.dropped_conflicts) == 1
    assert {lab for _, lab in data.dropped_conflicts[0]["copies"]} == {"monocyte", "lymphocyte"}
    hashes = [e.sha256 for s in data.splits.values() for e in s]
    assert len(hashes) == len(set(hashes)) == 5 * 24 - 1  # the conflicting monocyte is gone too
    # stratified: every class in every split, in the recipe's proportions
    for split, frac in zip(("train", "validation", "test"), QUICK.fractions, strict=True):
        counts = Counter(e.label for e in data.splits[split])
        assert set(counts) == set(CELL_CLASSES)
        assert all(abs(n - frac * 24) <= 1.5 for n in counts.values())


def test_same_seed_same_split_other_seed_other_split(library):
    cells = read_cell_library(library)
    a, b = prepare_data(cells, QUICK, library), prepare_data(cells, QUICK, library)
    c = prepare_data(cells, dataclasses.replace(QUICK, seed=1), library)
    assert [e.sha256 for e in a.splits["test"]] == [e.sha256 for e in b.splits["test"]]
    assert [e.sha256 for e in a.splits["test"]] != [e.sha256 for e in c.splits["test"]]


@pytest.fixture(scope="module")
def trained(library, tmp_path_factory) -> Path:
    return train(library, tmp_path_factory.mktemp("m") / "quick", QUICK, log=lambda _: None)


def test_training_writes_a_loadable_calibrated_artifact_with_its_split(trained, library):
    model = load_artifact(trained)
    card = model.card
    assert card["training"]["recipe"]["epochs"] == 2
    assert card["training"]["duplicates_merged"] == 1
    assert len(card["calibration"]["ova_scale"]) == 5 and all(a > 0 for a in card["calibration"]["ova_scale"])
    assert 0 <= card["thresholds"]["min_confidence"] < 1
    assert len(card["training"]["risk_coverage_validation"]) == 99
    with open(trained / SPLIT_FILE) as f:
        rows = list(csv.DictReader(f))
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    assert all((library / r["path"]).is_file() for r in rows)
    # the operating-domain profile is fitted on the split's train/validation cells and verified on load
    assert card["domain_profile"]["fitted_on"]["library"] == str(library)
    assert model.domain is not None and model.domain.threshold == card["domain_profile"]["threshold"]


def test_training_is_reproducible(trained, library, tmp_path):
    again = train(library, tmp_path / "again", QUICK, log=lambda _: None)
    assert json.loads((again / "model.json").read_text())["weights"]["sha256"] == load_artifact(trained).sha256


def test_evaluate_reports_out_of_scope_cells_separately(trained, library, tmp_path, pbc_cells):
    lib = tmp_path / "eval"
    shutil.copytree(library, lib)
    (lib / "platelet").mkdir()  # an out-of-scope label: here, corner crops of slide background
    from PIL import Image

    for i, c in enumerate(pbc_cells[:6]):
        Image.open(c.path).crop((0, 0, 110, 110)).save(lib / "platelet" / f"bg{i}.png")
    report = evaluate_cells(load_artifact(trained), read_cell_library(lib))
    assert list(report)[: len(EVALUATION_KEYS)] == list(EVALUATION_KEYS)
    assert report["n"] == 5 * 24 + 2  # both copies of each duplicate are evaluated; platelets are not
    assert report["out_of_scope"]["platelet"]["n"] == 6
    assert sum(report["out_of_scope"]["platelet"]["predicted"].values()) == 6
    assert sum(r["n"] for r in report["per_class"].values()) == report["n"]

    out = tmp_path / "eval.json"
    r = run_wbcv("evaluate", str(lib), "--model", str(trained), "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "balanced accuracy" in r.stdout and "out-of-scope labels" in r.stdout
    assert list(json.loads(out.read_text())) == list(EVALUATION_KEYS)


def test_wbcv_train_command_trains_and_qualifies(library, tmp_path):
    out = tmp_path / "cli-model"
    r = run_wbcv(
        "train",
        "--cells",
        str(library),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--limit-per-class",
        "12",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "model.json").read_text())
    assert card["metrics"]["split"] == "test" and "ablation" in card and "stress_test" in card
    assert (out / "MODEL_CARD.md").is_file() and "balanced accuracy" in r.stdout
    r = run_wbcv("train", "--cells", str(tmp_path / "missing"), "--out", str(out), timeout=120)
    assert r.returncode == 2 and "cell library folder does not exist" in r.stderr and "Traceback" not in r.stderr


def test_a_library_too_small_to_measure_trains_without_an_acquisition_reference(trained):
    # 24 cells a class leave about 17 in the training split, fewer than a per-class median needs:
    # the model is saved, and runs frame its images without the per-sample correction
    card = json.loads((trained / "model.json").read_text())
    assert card["input"]["crop"] and "acquisition_reference" not in card["input"]
