"""`wbcv adapt`: batch-normalisation re-estimation, fine-tuning, lineage in the card, re-qualification.

The networks here are small untrained artifacts (``write_test_artifact``): these tests check what
the adaptation does to an artifact and its card, not how much accuracy it buys (that is
``benchmarks/eval_adapt.py`` on the Tecom cells, whose figures are in the README).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_wbcv, write_test_artifact
from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.adapt import AdaptRecipe, SiteData, adapt, refit_ood, renormalise_batchnorm, site_features
from wbcv.inference.artifact import load_artifact
from wbcv.inference.library import LabelledCell
from wbcv.inference.ood import FeatureDensity
from wbcv.inference.predict import decode_files
from wbcv.validation.model_evaluation import requalify_adapted

QUICK = AdaptRecipe(epochs=1, min_steps=2, batch_size=8, threads=1)


def sample(cells: list[LabelledCell], per_class: int, seed: int) -> list[LabelledCell]:
    rng = random.Random(seed)
    return [c for label in CELL_CLASSES for c in rng.sample([c for c in cells if c.label == label], per_class)]


def write_library(cells: list[LabelledCell], root: Path) -> Path:
    """A library folder (one sub-folder per label) of links to the cells, so no image is copied."""
    for i, c in enumerate(cells):
        (root / c.label).mkdir(parents=True, exist_ok=True)
        (root / c.label / f"{i:03d}{c.path.suffix}").symlink_to(c.path)
    return root


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_artifact(tmp_path_factory.mktemp("parent") / "parent", seed=3)


def test_batchnorm_statistics_become_those_of_the_site(parent, pbc_cells):
    model = load_artifact(parent, fold=False)
    pixels = torch.from_numpy(decode_files(model, [c.path for c in sample(pbc_cells, 4, 0)]).pixels)
    bn = next(m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    assert renormalise_batchnorm(model.net, pixels) > 0
    hook.remove()
    site_mean = torch.cat(seen).mean(dim=(0, 2, 3))  # the layer's input over the site's cells
    assert torch.allclose(bn.running_mean, site_mean, atol=1e-4), (bn.running_mean[:4], site_mean[:4])
    assert not bn.training and bn.momentum is not None  # left in evaluation mode with its momentum
    parent_bn = next(m for m in load_artifact(parent, fold=False).net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.allclose(parent_bn.running_mean, bn.running_mean, atol=1e-3)  # it did change


def test_an_adapted_artifact_records_its_lineage_and_loads(parent, pbc_cells, tmp_path):
    labelled = sample(pbc_cells, 3, 1)
    unlabelled = [c.path for c in sample(pbc_cells, 2, 2)]
    out = adapt(parent, tmp_path / "adapted", unlabelled, labelled, QUICK, log=lambda _m: None)
    adapted, before = load_artifact(out), load_artifact(parent)
    lineage = adapted.card["adaptation"]
    assert lineage["parent"] == {
        "model_id": before.model_id,
        "weights_sha256": before.sha256,
        "path": str(before.path),
    }
    assert lineage["method"].startswith("batchnorm-statistics") and "supervised-fine-tuning" in lineage["method"]
    assert lineage["data"]["labelled_cells"] == 15 and lineage["data"]["unlabelled_images"] == 10
    assert len(lineage["data"]["labelled_listing_sha256"]) == 64
    assert len(lineage["data"]["unlabelled_listing_sha256"]) == 64
    assert lineage["requalified"] is False
    assert adapted.sha256 != before.sha256
    assert "metrics" not in adapted.card  # the parent's figures are not the adapted weights' figures
    # another labelled set gives another data hash: the lineage identifies the data
    other = adapt(parent, tmp_path / "other", unlabelled, sample(pbc_cells, 3, 9), QUICK, log=lambda _m: None)
    other_data = load_artifact(other).card["adaptation"]["data"]
    assert other_data["labelled_listing_sha256"] != lineage["data"]["labelled_listing_sha256"]


def test_requalification_writes_adapted_and_parent_figures_on_the_same_cells(parent, pbc_cells, tmp_path):
    out = adapt(parent, tmp_path / "adapted", [], sample(pbc_cells, 3, 4), QUICK, log=lambda _m: None)
    held_out = sample(pbc_cells, 2, 5)
    section = requalify_adapted(out, held_out, log=lambda _m: None)
    card = json.loads((out / "model.json").read_text())
    assert card["adaptation"]["requalified"] is True
    assert section["cells"] == 10 and card["metrics"]["n"] == 10
    assert section["adapted"]["balanced_accuracy"] == card["metrics"]["balanced_accuracy"]
    assert section["parent"]["n"] == 10  # the parent was evaluated on the same cells
    assert "Adaptation to a new site" in (out / "MODEL_CARD.md").read_text()
    load_artifact(out)  # the card edit keeps the artifact loadable (weights hash untouched)


def test_requalifying_a_model_that_was_not_adapted_is_an_error(parent, pbc_cells):
    with pytest.raises(WbcvError, match="not an adapted model"):
        requalify_adapted(parent, sample(pbc_cells, 1, 0))


def test_nothing_to_adapt_on_is_an_error(parent, tmp_path):
    with pytest.raises(WbcvError, match="nothing to adapt on"):
        adapt(parent, tmp_path / "x", [], [], QUICK)


@pytest.mark.slow  # starts the command line
def test_the_command_line_adapts_and_refuses_evaluation_cells_it_trained_on(parent, pbc_cells, tmp_path):
    lib = write_library(sample(pbc_cells, 3, 6), tmp_path / "labelled")
    held = write_library(sample(pbc_cells, 2, 7), tmp_path / "held")
    r = run_wbcv("adapt", "--model", str(parent), "--labelled", str(lib), "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "NOT re-qualified" in r.stdout
    assert "Not re-qualified" in (tmp_path / "a" / "MODEL_CARD.md").read_text()
    r = run_wbcv(
        "adapt", "--model", str(parent), "--labelled", str(lib), "--evaluate", str(lib), "--out", str(tmp_path / "b")
    )
    assert r.returncode == 2 and "also in --labelled" in r.stderr and "Traceback" not in r.stderr
    r = run_wbcv(
        "adapt", "--model", str(parent), "--labelled", str(lib), "--evaluate", str(held), "--out", str(tmp_path / "c")
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "c" / "model.json").read_text())["adaptation"]["requalified"] is True


def test_the_site_density_is_finite_when_a_class_has_a_single_cell(parent, pbc_cells, tmp_path):
    """One basophil at the site lands in the fitted half or the threshold half, depending on the
    shuffle; either way the density and its threshold are finite (an empty class once made every
    distance NaN, which silently switched the out-of-distribution rule off)."""
    model = load_artifact(parent, fold=False)
    cells = sample(pbc_cells, 8, 11)
    decoded = decode_files(model, [c.path for c in cells])
    site = SiteData(
        torch.from_numpy(decoded.pixels), torch.zeros(40, dtype=torch.long), np.zeros((40, 3)), np.zeros(40), {}
    )
    for where in range(0, 40, 5):  # the single basophil at several positions: some fall in each half
        labels = torch.tensor([i % 4 for i in range(40)])
        labels[where] = CELL_CLASSES.index("basophil")
        section = refit_ood(site_features(model, site), labels, tmp_path / str(where))
        assert section is not None and np.isfinite(section["threshold"])
        density = FeatureDensity.load(str(tmp_path / str(where) / "ood.npz"))
        assert np.isfinite(density.means).all() and np.isfinite(density.precision).all()


def test_an_existing_output_folder_is_never_written_over(parent, pbc_cells, tmp_path):
    """--out naming the parent (or any existing folder) is refused before anything is read or written."""
    before = (parent / "model.json").read_bytes()
    with pytest.raises(WbcvError, match="already exists; give a new folder"):
        adapt(parent, parent, [], sample(pbc_cells, 1, 0), QUICK)
    assert (parent / "model.json").read_bytes() == before and (parent / "weights.pt").is_file()
    out = adapt(parent, tmp_path / "new", [], sample(pbc_cells, 2, 0), QUICK, log=lambda _m: None)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    load_artifact(out)


def test_a_parent_gate_is_dropped_not_carried_over_to_changed_features(pbc_cells, tmp_path):
    """The white-cell gate weighs the parent's features; an adapted model must still load, without it."""
    import shutil

    from wbcv.inference.artifact import read_card, save_gate
    from wbcv.inference.wbc_gate import WbcGate

    gated = write_test_artifact(tmp_path / "gated", seed=3)
    dim = load_artifact(gated).card["architecture"]["backbone"]["stage_channels"][-1]
    card = read_card(gated)
    ones = np.ones(dim, np.float32)
    card["wbc_gate"] = save_gate(WbcGate(ones * 0, ones, ones, 0.0, -1e9), gated, {})
    (gated / "model.json").write_text(json.dumps(card))
    assert load_artifact(gated).gate is not None
    out = adapt(gated, tmp_path / "adapted", [], sample(pbc_cells, 3, 6), QUICK, log=lambda _m: None)
    adapted = load_artifact(out)
    assert adapted.gate is None and "wbc_gate" not in adapted.card
    assert "fitted on the parent's features" in adapted.card["adaptation"]["wbc_gate_dropped"]
    shutil.rmtree(gated)
