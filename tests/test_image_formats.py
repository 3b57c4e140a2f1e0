"""BMP and TIFF cells through the labelled-library reader, `wbcv evaluate` and the batch runner:
they are read as JPEG and PNG are, and a labelled set of which nothing decodes is a clear error."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from tests.conftest import run_wbcv
from wbcv.base.errors import WbcvError
from wbcv.base.tables import PREDICTIONS_FILE, SKIPPED_FILE
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.inference.artifact import load_artifact
from wbcv.inference.library import LabelledCell, read_cell_library
from wbcv.inference.runner import InferenceParams, run_inference
from wbcv.inference.slideset import read_slide_set
from wbcv.validation.model_evaluation import evaluate_cells

FORMATS = {"PNG": ".png", "BMP": ".bmp", "TIFF": ".tif"}


def _two_per_class(pbc_cells: Sequence[LabelledCell]) -> list[LabelledCell]:
    return [c for label in CELL_CLASSES for c in [x for x in pbc_cells if x.label == label][:2]]


def _write_library(cells: Sequence[LabelledCell], root: Path, fmt: str) -> Path:
    """The same real cells, decoded once and saved losslessly in ``fmt``, one folder per label."""
    for c in cells:
        (root / c.label).mkdir(parents=True, exist_ok=True)
        Image.open(c.path).convert("RGB").save(root / c.label / f"{c.path.stem}{FORMATS[fmt]}", format=fmt)
    return root


@pytest.fixture(scope="module")
def libraries(tmp_path_factory, pbc_cells) -> dict[str, Path]:
    cells = _two_per_class(pbc_cells)
    return {fmt: _write_library(cells, tmp_path_factory.mktemp(fmt.lower()), fmt) for fmt in FORMATS}


@pytest.fixture(scope="module")
def bundled_model():
    return load_artifact(None)


def _metrics(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "skipped"}


def test_bmp_and_tiff_cells_classify_exactly_like_their_png_copies(libraries, bundled_model):
    reports = {fmt: evaluate_cells(bundled_model, read_cell_library(root)) for fmt, root in libraries.items()}
    assert reports["PNG"]["n"] == 10 and reports["PNG"]["skipped"] == {}
    for fmt in ("BMP", "TIFF"):
        assert reports[fmt]["skipped"] == {}
        assert _metrics(reports[fmt]) == _metrics(reports["PNG"])


def test_file_format_is_told_by_content_not_by_the_name(libraries, bundled_model, tmp_path):
    root = tmp_path / "lib"
    tiff_named_bmp = root / "neutrophil" / "really_a_tiff.bmp"
    tiff_named_bmp.parent.mkdir(parents=True)
    tiff_named_bmp.write_bytes(next((libraries["TIFF"] / "neutrophil").iterdir()).read_bytes())
    report = evaluate_cells(bundled_model, read_cell_library(root))
    assert report["n"] == 1 and report["skipped"] == {}


@pytest.mark.slow  # starts the command line or a whole run
def test_wbcv_evaluate_on_a_labelled_bmp_folder(libraries, bundled_model, tmp_path):
    out = tmp_path / "eval.json"
    r = run_wbcv("evaluate", str(libraries["BMP"]), "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cells (in scope): 10" in r.stdout and "could not be decoded" not in r.stdout
    expected = _metrics(evaluate_cells(bundled_model, read_cell_library(libraries["PNG"])))
    assert json.loads(out.read_text()) == expected


@pytest.fixture
def undecodable(tmp_path) -> Path:
    """Three labelled files with image names, none of them a readable image."""
    root = tmp_path / "labelled"
    (root / "neutrophil").mkdir(parents=True)
    (root / "monocyte").mkdir()
    (root / "neutrophil" / "001.bmp").write_text("exported by the camera software: see log\n")
    (root / "neutrophil" / "002.bmp").write_bytes(b"")
    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, format="GIF")
    (root / "monocyte" / "003.tif").write_bytes(gif.getvalue())
    return root


def test_labelled_set_with_no_decodable_cell_is_an_error_naming_the_reasons(undecodable, bundled_model):
    with pytest.raises(WbcvError, match="none of the 3 labelled cells could be decoded") as e:
        evaluate_cells(bundled_model, read_cell_library(undecodable))
    message = str(e.value)
    assert "001.bmp: not a readable image" in message and "002.bmp: empty file" in message
    assert "003.tif: unsupported image format GIF" in message


@pytest.mark.slow  # starts the command line or a whole run
def test_wbcv_evaluate_on_undecodable_cells_exits_2_with_the_reason_and_no_traceback(undecodable):
    r = run_wbcv("evaluate", str(undecodable), timeout=300)
    assert r.returncode == 2
    assert "none of the 3 labelled cells could be decoded" in r.stderr and "empty file" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_batch_runner_classifies_bmp_and_tiff_cells_like_png(pbc_cells, model_dir, tmp_path):
    batch = build_slide_set(pbc_cells, tmp_path / "batch", n_samples=1, cells_per_slide=3, seed=3)
    slide = batch / "S00000"
    rgb = Image.open(slide / "cell0000.jpg").convert("RGB")
    for fmt, ext in FORMATS.items():
        rgb.save(slide / f"copy{ext}", format=fmt)
    rgb.save(slide / "copy.tiff", format="TIFF", compression="tiff_lzw")
    result = run_inference(
        read_slide_set(batch), load_artifact(model_dir), tmp_path / "runs", InferenceParams(), progress=False
    )
    pred = pl.read_parquet(result.run_dir / PREDICTIONS_FILE).filter(pl.col("cell_path").str.contains("/copy"))
    assert pl.read_parquet(result.run_dir / SKIPPED_FILE).height == 0
    assert sorted(pred["cell_path"]) == ["S00000/copy.bmp", "S00000/copy.png", "S00000/copy.tif", "S00000/copy.tiff"]
    # the same pixels give the same decision whatever the format (up to float noise of the batch position)
    assert pred["predicted_class"].n_unique() == 1
    probabilities = pred.select(f"p_{c}" for c in CELL_CLASSES).rows()
    assert all(row == pytest.approx(probabilities[0], abs=1e-6) for row in probabilities)
    assert set(pred["source_mode"]) == {"RGB"}
