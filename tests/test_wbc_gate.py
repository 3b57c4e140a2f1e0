"""The white-cell gate and the locator check of image framing (issue 14: refuse what is not a
mature white cell): its definition against scikit-learn, its storage, its place in the decision."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from tests.conftest import PBC_DIR, write_test_artifact
from wbcv.base.errors import WbcvError
from wbcv.inference.artifact import InputSpec, load_artifact, read_card, save_gate, save_ood
from wbcv.inference.combine import ABSTAIN_REASONS
from wbcv.inference.framing import frame_cells
from wbcv.inference.ood import FeatureDensity
from wbcv.inference.predict import decide
from wbcv.inference.training import read_split
from wbcv.inference.wbc_gate import GATE_FILE, WbcGate, fit_gate, with_threshold


def _sources(rng: np.random.Generator, d: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lab_a = rng.normal(size=(600, d)) + 2.0
    lab_b = rng.normal(size=(40, d)) + np.array([2.0, -1.0] + [2.0] * (d - 2))  # a small second lab
    negatives = rng.normal(size=(300, d)) - 1.5
    return lab_a, lab_b, negatives


def test_the_gate_is_the_weighted_l2_logistic_regression_scikit_learn_fits():
    """Same loss as LogisticRegression(C=1/l2) with each source's total weight 1/(2k), negatives 1/2."""
    rng = np.random.default_rng(0)
    lab_a, lab_b, negatives = _sources(rng)
    l2 = 0.05
    gate = fit_gate([lab_a, lab_b], negatives, l2=l2)
    pos = np.concatenate([lab_a, lab_b])
    x = (np.concatenate([pos, negatives]) - gate.mean) / gate.scale
    y = np.r_[np.ones(len(pos)), np.zeros(len(negatives))]
    w = np.r_[np.full(len(lab_a), 0.25 / len(lab_a)), np.full(len(lab_b), 0.25 / len(lab_b)), np.full(300, 0.5 / 300)]
    ref = LogisticRegression(C=1 / l2, tol=1e-10, max_iter=10_000).fit(x, y, sample_weight=w)
    assert gate.weight == pytest.approx(ref.coef_[0], abs=2e-3)
    assert gate.bias == pytest.approx(ref.intercept_[0], abs=2e-3)
    assert gate.mean == pytest.approx(pos.mean(0), rel=1e-5)


def test_the_threshold_refuses_the_chosen_share_of_held_out_white_cells_and_the_negatives():
    rng = np.random.default_rng(1)
    lab_a, lab_b, negatives = _sources(rng)
    gate = fit_gate([lab_a, lab_b], negatives)
    validation = _sources(np.random.default_rng(5))[0]
    gate = with_threshold(gate, gate.logit(validation), 0.01)
    fresh_a, fresh_b, fresh_neg = _sources(np.random.default_rng(2))
    assert np.mean(gate.refuses(fresh_a)) == pytest.approx(0.01, abs=0.012)
    assert np.mean(gate.refuses(fresh_neg)) >= 0.97
    assert np.mean(gate.refuses(fresh_b)) <= 0.2  # the small lab is not drowned by the large one


def test_without_a_white_cell_or_a_negative_there_is_no_gate():
    with pytest.raises(ValueError, match="at least one white cell and one negative"):
        fit_gate([np.empty((0, 3))], np.ones((4, 3)))
    with pytest.raises(ValueError, match="validation white cells"):
        with_threshold(fit_gate([np.ones((4, 3))], -np.ones((4, 3))), np.empty(0))


@pytest.fixture
def gated_model(tmp_path):
    """An untrained artifact whose gate refuses bright images and whose density refuses dark ones."""
    model_dir = write_test_artifact(tmp_path / "m")
    model = load_artifact(model_dir)
    with torch.inference_mode():
        dark = model.net(torch.zeros(8, 64, 64, 3, dtype=torch.uint8)).features.numpy()
        bright = model.net(torch.full((8, 64, 64, 3), 230, dtype=torch.uint8)).features.numpy()
        mid = model.net(torch.full((8, 64, 64, 3), 120, dtype=torch.uint8)).features.numpy()
    gate = fit_gate([dark, mid], bright, l2=1e-2)
    gate = with_threshold(gate, gate.logit(np.concatenate([dark, mid])), 0.0)
    card = read_card(model_dir)
    card["wbc_gate"] = save_gate(gate, model_dir, {"quantile": 0.0})
    density = FeatureDensity(mid[:1].repeat(5, 0), np.eye(mid.shape[1], dtype=np.float32) * 1e6, threshold=1.0)
    card["ood"] = save_ood(density, model_dir, {"quantile": 0.995})
    (model_dir / "model.json").write_text(json.dumps(card))
    return model_dir


def test_a_refused_cell_is_not_a_wbc_over_out_of_distribution_and_under_no_cell_found(gated_model):
    model = load_artifact(gated_model)
    assert model.gate is not None and model.ood is not None
    # mid: in; dark: far from the density only; bright: refused by the gate (twice: once without a cell)
    images = torch.stack([torch.full((64, 64, 3), v, dtype=torch.uint8) for v in (120, 0, 230, 230)])
    with torch.inference_mode():
        logits = model.net(images)
    out = decide(model, logits, np.array([False, False, False, True]))
    reasons = [ABSTAIN_REASONS[int(r)] for r in out.abstain_reason]
    assert reasons[1:] == ["out_of_distribution", "not_a_wbc", "no_cell_found"]
    assert reasons[0] not in ("out_of_distribution", "not_a_wbc", "no_cell_found")
    assert out.predicted[1:].tolist() == [-1, -1, -1]


def test_a_changed_or_mismatched_gate_file_is_refused(gated_model):
    path = gated_model / GATE_FILE
    original = path.read_bytes()
    data = bytearray(original)
    data[-30] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WbcvError, match="does not match the model card"):
        load_artifact(gated_model)
    short = WbcGate(np.zeros(3, np.float32), np.ones(3, np.float32), np.ones(3, np.float32), 0.0, 0.0)
    card = read_card(gated_model)
    card["wbc_gate"] = save_gate(short, gated_model, {})
    (gated_model / "model.json").write_text(json.dumps(card))
    with pytest.raises(WbcvError, match="the gate weighs 3 features"):
        load_artifact(gated_model)


def _corner(path, box=(0, 0, 110, 110)) -> np.ndarray:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").crop(box).resize((64, 64)).save(buf, format="PNG")
    return np.asarray(Image.open(buf).convert("RGB"))


def test_image_framing_with_the_locator_check_refuses_images_without_a_white_cell(pbc_cells):
    """Red cells only (corners of real PBC images), a blank slide: no_cell; the cells themselves: found."""
    cells = pbc_cells[::400][:12]
    whole = [np.asarray(Image.open(c.path).convert("RGB").resize((64, 64))) for c in cells]
    corners = [_corner(c.path) for c in cells]
    blank = [np.full((64, 64, 3), (232, 214, 221), np.uint8)]
    checked = frame_cells(whole + corners + blank, InputSpec(size=64, locate_check=True))
    assert not checked.no_cell[: len(whole)].any()
    assert checked.no_cell[len(whole) :].mean() >= 0.9
    assert all(r for r, n in zip(checked.reasons, checked.no_cell, strict=True) if n)
    plain = frame_cells(whole + corners + blank, InputSpec(size=64))
    assert not plain.no_cell.any()  # off by default: older artifacts behave as they did
    assert (checked.pixels == plain.pixels).all()  # the check never changes what the network sees


def test_the_bundled_model_refuses_red_cells_of_another_lab_and_keeps_its_own_white_cells(tmp_path):
    """Raabin test-split red-cell crops (another lab, never fitted on) against held-out PBC cells.

    All 617 crops of the kept-aside fields, the set the issue's target (>= 95 % refused) and the card
    are about: with the per-sample acquisition correction the folder is one sample, and which cells
    it is measured on matters (its first 300 crops alone: 93.7 %)."""
    from wbcv.fixtures.field_crops import field_crops
    from wbcv.validation.model_evaluation import evaluate_cells, rejection_figures

    model = load_artifact(None)
    assert model.gate is not None and model.ood is not None and model.input.locate_check
    folder = tmp_path / "red_cell"
    folder.mkdir()
    for i, data in enumerate(field_crops("test")["red_cell"]):
        (folder / f"r{i:03d}.jpg").write_bytes(data)
    figures = rejection_figures(model, {"red_cell": folder})["red_cell"]
    assert figures["n"] == 617 and figures["unclassified_share"] >= 0.95
    assert figures["reasons"].get("not_a_wbc", 0) > 0 and figures["reasons"].get("no_cell_found", 0) > 0
    held_out = read_split(model.path, PBC_DIR, "test")[::3]
    report = evaluate_cells(model, held_out)
    assert report["unclassified_rate"] <= 0.03


def _small_split(model_dir, pbc_cells, per_class: int = 12) -> None:
    rows = ["path,label,split"]
    for label in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"):
        mine = [c for c in pbc_cells if c.label == label][: per_class + per_class // 2]
        rows += [f"{c.path.relative_to(PBC_DIR).as_posix()},{label},train" for c in mine[:per_class]]
        rows += [f"{c.path.relative_to(PBC_DIR).as_posix()},{label},validation" for c in mine[per_class:]]
    (model_dir / "split.csv").write_text("\n".join(rows) + "\n")


def test_fit_rejection_gives_an_artifact_the_three_refusals_and_says_so(tmp_path, pbc_cells):
    from tests.conftest import run_wbcv
    from wbcv.fixtures.field_crops import field_crops

    model_dir = write_test_artifact(tmp_path / "m")
    negatives = tmp_path / "red_cell"
    negatives.mkdir()
    for i, data in enumerate(field_crops("train", limit_per_kind=40)["red_cell"]):
        (negatives / f"r{i:02d}.jpg").write_bytes(data)
    args = ("fit-rejection", str(model_dir), "--cells", str(PBC_DIR), "--negatives", str(negatives))
    missing = run_wbcv(*args)
    assert missing.returncode == 2 and "split file split.csv is missing" in missing.stderr
    assert "Traceback" not in missing.stderr
    _small_split(model_dir, pbc_cells)
    done = run_wbcv(*args)
    assert done.returncode == 0, done.stderr
    assert "white-cell gate added" in done.stdout and "locator check on" in done.stdout
    card = read_card(model_dir)
    assert card["input"]["locate_check"] is True and card["ood"]["validation_rejected"] is not None
    gate = card["wbc_gate"]
    assert gate["positives"]["training_split_cells"] == 60
    assert gate["negatives"][0]["files"] == 40 and len(gate["negatives"][0]["listing_sha256"]) == 64
    model = load_artifact(model_dir)
    assert model.gate is not None and model.ood is not None and model.input.locate_check
