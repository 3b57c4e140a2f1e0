"""Cell framing (issue 14): the located cell at one scale and one stain, and the no-cell path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from tests.conftest import write_test_artifact
from tests.test_locate import BAD_INPUTS
from wbcv.base.tables import PREDICTIONS_FILE
from wbcv.inference.artifact import InputSpec, input_card, load_artifact, read_card
from wbcv.inference.combine import ABSTAIN_REASONS
from wbcv.inference.decode import decode_cell
from wbcv.inference.framing import frame_cells, ring_mask, work_size
from wbcv.inference.predict import decode_files, score_pixels
from wbcv.inference.runner import InferenceParams, run_inference
from wbcv.inference.slideset import read_slide_set
from wbcv.inference.stain import StainStats, stain_stats

CELL = InputSpec(size=64, framing="cell", cell_fraction=0.7)


@pytest.fixture(scope="module")
def pbc_images(pbc_cells) -> list[np.ndarray]:
    """Twelve PBC cells decoded as a cell-framing model decodes them."""
    picks = [c for i, c in enumerate(pbc_cells) if i % 700 == 0][:12]
    return [decode_cell(c.path.read_bytes(), work_size(CELL)).pixels for c in picks]


def test_image_framing_is_the_decoded_image_unchanged(pbc_images):
    spec = InputSpec(size=work_size(CELL))
    framed = frame_cells(pbc_images, spec)
    assert np.array_equal(framed.pixels, np.stack(pbc_images)) and not framed.no_cell.any()


def test_cell_framing_finds_every_pbc_cell_and_gives_it_one_size(pbc_images):
    framed = frame_cells(pbc_images, CELL)
    assert framed.pixels.shape == (len(pbc_images), 64, 64, 3) and framed.pixels.dtype == np.uint8
    assert not framed.no_cell.any() and all(r == "" for r in framed.reasons)
    assert np.all((framed.diameter_px > 10) & (framed.diameter_px < work_size(CELL)))


def _shrunk(image: np.ndarray, factor: float) -> np.ndarray:
    """The same field seen at a lower magnification: smaller, padded with its own border colour."""
    h, w = image.shape[:2]
    small = np.asarray(Image.fromarray(image).resize((round(w * factor), round(h * factor)), Image.Resampling.LANCZOS))
    out = np.empty_like(image)
    out[:] = np.median(image[:4].reshape(-1, 3), axis=0).astype(np.uint8)
    top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def test_a_cell_imaged_smaller_is_framed_at_the_same_size(pbc_images):
    """What the issue asks of scale: the pixel size of the cell must not reach the network."""
    smaller = [_shrunk(im, 0.7) for im in pbc_images]
    plain, framed = frame_cells(pbc_images, CELL), frame_cells(smaller, CELL)
    assert not framed.no_cell.any()
    ratio = framed.diameter_px / plain.diameter_px
    assert np.median(ratio) == pytest.approx(0.7, abs=0.08)
    image_spec = InputSpec(size=64)
    as_image = [np.asarray(Image.fromarray(im).resize((64, 64), Image.Resampling.BILINEAR)) for im in pbc_images]
    as_image_small = [np.asarray(Image.fromarray(im).resize((64, 64), Image.Resampling.BILINEAR)) for im in smaller]
    image_diff = np.abs(
        frame_cells(as_image, image_spec).pixels.astype(float) - frame_cells(as_image_small, image_spec).pixels
    ).mean()
    cell_diff = np.abs(plain.pixels.astype(float) - framed.pixels).mean()
    assert cell_diff < 0.75 * image_diff, (cell_diff, image_diff)  # measured 0.70 (120 px decode, stride-2 locate)


@pytest.mark.parametrize("name", ["blank white", "all black", "uniform noise", "PBC-like red cells only"])
def test_an_image_without_a_cell_is_flagged_with_the_locators_reason(pbc_images, name):
    make, words = BAD_INPUTS[name]
    bad = np.asarray(Image.fromarray(make()).resize((90, 90)))
    framed = frame_cells([pbc_images[0], bad, pbc_images[1]], CELL)
    assert framed.no_cell.tolist() == [False, True, False]
    assert words in framed.reasons[1] and np.isnan(framed.diameter_px[1])


def test_the_ring_around_the_cell_gets_the_target_stain(pbc_images):
    target = StainStats(mean=(-0.3, 0.08, 0.02), std=(0.1, 0.02, 0.003))
    spec = InputSpec(size=64, framing="cell", stain_mean=target.mean, stain_std=target.std)
    ring = np.broadcast_to(ring_mask(64, spec.cell_fraction), (len(pbc_images), 64, 64))
    after = np.array([s.mean for s in stain_stats(frame_cells(pbc_images, spec).pixels, ring)])
    before = np.array([s.mean for s in stain_stats(frame_cells(pbc_images, CELL).pixels, ring)])
    # every image's surroundings land on the target (up to uint8 rounding and clipping)
    assert np.abs(after - np.array(target.mean)).max() < 0.02
    assert np.abs(before - np.array(target.mean)).max() > 0.05


def test_the_card_records_the_framing_and_old_cards_read_as_image_framing(tmp_path):
    spec = InputSpec(
        size=64, framing="cell", cell_fraction=0.65, stain_mean=(-0.1, 0.0, 0.0), stain_std=(0.1, 0.1, 0.1)
    )
    model = load_artifact(write_test_artifact(tmp_path / "m", spec=spec))
    assert model.input == spec
    card = read_card(tmp_path / "m")
    assert card["input"] == input_card(spec) and card["input"]["stain_target"]["mean"] == [-0.1, 0.0, 0.0]
    old = load_artifact(write_test_artifact(tmp_path / "old"))
    assert old.input.framing == "image" and "framing" not in read_card(tmp_path / "old")["input"]


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def framing_batch(tmp_path_factory, pbc_cells) -> Path:
    """One slide: four PBC cells, a blank image and an image of red cells only."""
    root = tmp_path_factory.mktemp("framing") / "batch"
    slide = root / "S1"
    slide.mkdir(parents=True)
    for i, c in enumerate(pbc_cells[:: len(pbc_cells) // 4][:4]):
        (slide / f"cell{i}.jpg").write_bytes(c.path.read_bytes())
    (slide / "x-blank.png").write_bytes(_png(np.full((360, 360, 3), 250, np.uint8)))
    red = np.asarray(Image.fromarray(BAD_INPUTS["PBC-like red cells only"][0]()).resize((360, 360)))
    (slide / "x-red-cells.png").write_bytes(_png(red))
    (root / "manifest.csv").write_text("sample_id\nS1\n")
    return root


def test_inference_leaves_no_cell_images_unclassified_and_counts_them(framing_batch, tmp_path):
    model = load_artifact(write_test_artifact(tmp_path / "m", spec=CELL))
    result = run_inference(read_slide_set(framing_batch), model, tmp_path / "runs", InferenceParams(workers=1))
    predictions = pl.read_parquet(result.run_dir / PREDICTIONS_FILE).sort("cell_path")
    assert predictions.height == 6  # none skipped: an image without a cell is a cell left unclassified
    lost = predictions.filter(pl.col("cell_path").str.contains("x-"))
    assert lost["unclassified"].all() and lost["abstain_reason"].to_list() == ["no_cell_found"] * 2
    found = predictions.filter(~pl.col("cell_path").str.contains("x-"))
    assert "no_cell_found" not in found["abstain_reason"].to_list()
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["summary"]["n_cells"] == 6 and record["summary"]["n_unclassified"] >= 2


def test_evaluation_counts_no_cell_images_as_unclassified(framing_batch, tmp_path):
    model = load_artifact(write_test_artifact(tmp_path / "m", spec=CELL))
    paths = sorted((framing_batch / "S1").iterdir())
    decoded = decode_files(model, paths)
    assert decoded.rejected == {} and decoded.no_cell.tolist() == [False] * 4 + [True] * 2
    combined = score_pixels(model, decoded.pixels, decoded.no_cell).combined
    reasons = [ABSTAIN_REASONS[int(r)] for r in combined.abstain_reason]
    assert reasons[4:] == ["no_cell_found"] * 2 and combined.predicted[4:].tolist() == [-1, -1]


def _with_manifest(batch: Path, tmp_path: Path, manifest: str) -> Path:
    import shutil

    copy = tmp_path / "batch"
    shutil.copytree(batch, copy)
    (copy / "manifest.csv").write_text(manifest)
    return copy


@pytest.mark.parametrize(
    ("value", "words"),
    [("abc", "expected a positive number written in decimal"), ("-0.1", "expected a positive number"),
     ("12", "at most 5.0")],
)  # fmt: skip
def test_an_unreadable_pixel_size_is_a_batch_error_naming_the_sample(framing_batch, tmp_path, value, words):
    from wbcv.base.errors import WbcvError

    batch = _with_manifest(framing_batch, tmp_path, f"sample_id,um_per_px\nS1,{value}\n")
    with pytest.raises(WbcvError, match="um_per_px") as refused:
        read_slide_set(batch)
    assert words in str(refused.value) and "manifest.csv" in str(refused.value)


def test_the_pixel_size_gives_cell_sizes_in_micrometres_and_refuses_impossible_ones(framing_batch, tmp_path):
    model = load_artifact(write_test_artifact(tmp_path / "m", spec=CELL))
    # CellaVision DM96 images are about 0.1 µm per pixel: PBC cells measure 10-20 µm
    real = _with_manifest(framing_batch, tmp_path / "a", "sample_id,um_per_px\nS1,0.1\n")
    result = run_inference(read_slide_set(real), model, tmp_path / "runs-a", InferenceParams(workers=1))
    cells = pl.read_parquet(result.run_dir / PREDICTIONS_FILE).filter(~pl.col("cell_path").str.contains("x-"))
    assert cells["cell_diameter_um"].is_between(8, 25).all(), cells["cell_diameter_um"].to_list()
    assert cells["cell_diameter_px"].to_list() == pytest.approx((cells["cell_diameter_um"] * 10).to_list(), rel=1e-5)
    assert "no_cell_found" not in cells["abstain_reason"].to_list()
    # the same images declared at 0.01 µm per pixel would be objects of 1-2 µm: not white cells
    tiny = _with_manifest(framing_batch, tmp_path / "b", "sample_id,um_per_px\nS1,0.01\n")
    result = run_inference(read_slide_set(tiny), model, tmp_path / "runs-b", InferenceParams(workers=1))
    predictions = pl.read_parquet(result.run_dir / PREDICTIONS_FILE)
    assert predictions["abstain_reason"].to_list() == ["no_cell_found"] * 6
    counts = pl.read_parquet(result.run_dir / "counts.parquet")
    assert counts["um_per_px"].to_list() == [0.01] and counts["n_unclassified"].to_list() == [6]
