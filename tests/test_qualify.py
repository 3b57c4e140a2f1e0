"""The model card's per-laboratory and rejection figures (issue 14): computed, stored, rendered."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_test_artifact
from wbcv.base.errors import WbcvError
from wbcv.inference.artifact import InputSpec, load_artifact
from wbcv.inference.library import read_cell_library
from wbcv.validation.model_evaluation import other_lab_figures, rejection_figures, render_model_card


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cell_model(tmp_path_factory):
    return load_artifact(write_test_artifact(tmp_path_factory.mktemp("q") / "m", spec=InputSpec(framing="cell")))


def test_rejection_counts_every_image_and_its_reason(cell_model, tmp_path, pbc_cells):
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(3):
        (blank / f"b{i}.png").write_bytes(_png(np.full((120, 120, 3), 250 - i, np.uint8)))
    (blank / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (blank / "notes.txt").write_text("not an image: not counted")
    wbc = tmp_path / "wbc"
    wbc.mkdir()
    for i, c in enumerate(pbc_cells[:4]):
        (wbc / f"c{i}.jpg").write_bytes(c.path.read_bytes())
    figures = rejection_figures(cell_model, {"blank": blank, "wbc": wbc})
    assert figures["blank"]["n"] == 4
    assert figures["blank"]["reasons"] == {"no_cell_found": 3, "undecodable": 1}
    assert figures["blank"]["unclassified_share"] == 1.0
    assert figures["wbc"]["n"] == 4 and "no_cell_found" not in figures["wbc"]["reasons"]
    assert sum(figures["wbc"]["reasons"].values()) == 4


def test_an_empty_folder_is_an_error_naming_it(cell_model, tmp_path):
    with pytest.raises(WbcvError, match="no images of kind 'platelet'"):
        rejection_figures(cell_model, {"platelet": tmp_path})


def test_the_card_renders_other_labs_rejection_and_the_ood_score(cell_model, tecom_dir):
    cells = read_cell_library(tecom_dir)[::30]
    labs = {"tecom": other_lab_figures(cell_model, cells)}
    assert labs["tecom"]["n"] == len(cells) and set(labs["tecom"]["per_class"]) >= {"neutrophil"}
    card = {
        **cell_model.card,
        "other_labs": labs,
        "rejection": {"red_cell": {"n": 10, "unclassified_share": 0.9, "reasons": {"classified": 1}, "folder": "/x"}},
        "ood": {
            "method": "m",
            "threshold": 12.5,
            "quantile": 0.995,
            "validation_rejected": 0.005,
            "file": "f",
            "sha256": "s",
        },
    }
    text = render_model_card(card)
    assert "## Other laboratories (never trained or tuned on)" in text and "| tecom | 10 |" in text
    assert "| red_cell | 10 | 90.0 % | classified 1 | `/x` |" in text
    assert "threshold 12.5" in text


def test_the_pipeline_ablation_switches_off_one_part_at_a_time(tmp_path, pbc_cells):
    from wbcv.validation.model_evaluation import pipeline_ablation

    spec = InputSpec(framing="cell", stain_mean=(-0.17, 0.03, 0.01), stain_std=(0.09, 0.015, 0.002))
    model = load_artifact(write_test_artifact(tmp_path / "m", spec=spec))
    folder = tmp_path / "blank"
    folder.mkdir()
    (folder / "b.png").write_bytes(_png(np.full((120, 120, 3), 250, np.uint8)))
    table = pipeline_ablation(model, {"pbc": pbc_cells[:: len(pbc_cells) // 20][:20]}, {"blank": folder})
    assert list(table) == ["as shipped", "without stain normalisation"]
    for row in table.values():
        assert row["pbc"]["n"] == 20 and row["blank"] == {"n": 1, "unclassified_share": 1.0}
    text = render_model_card({**model.card, "pipeline_ablation": table})
    assert "| without stain normalisation | " in text and "100.0 % uncl." in text
