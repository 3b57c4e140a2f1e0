"""Per-sample magnification and light correction (wbcv.inference.acquisition) on real PBC cells."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from wbcv.base.tables import PREDICTIONS_FILE
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.inference.acquisition import (
    MAX_MEASURED,
    MIN_CELLS,
    AcquisitionReference,
    apply_colour,
    decode_corrected,
    decode_measured,
    evenly_spaced,
    fit_correction,
    measure_images,
    reference_from,
)
from wbcv.inference.artifact import InputSpec, _input_kwargs, input_card, load_artifact
from wbcv.inference.decode import DEFAULT_MAX_PIXELS, decode_cell
from wbcv.inference.predict import decode_files, score_pixels
from wbcv.inference.runner import InferenceParams, run_inference
from wbcv.inference.slideset import read_slide_set
from wbcv.validation.model_evaluation import STRESS_SHIFTS

from .conftest import PBC_DIR, run_wbcv, write_test_artifact


@pytest.fixture(scope="module")
def picked(pbc_cells):
    """25 cells of each class."""
    rng = np.random.default_rng(3)
    out = []
    for c in CELL_CLASSES:
        mine = [x for x in pbc_cells if x.label == c]
        out += [mine[int(i)] for i in rng.choice(len(mine), 25, replace=False)]
    return out


@pytest.fixture(scope="module")
def cell_bytes(picked) -> list[bytes]:
    return [c.path.read_bytes() for c in picked]


@pytest.fixture(scope="module")
def reference(picked, cell_bytes) -> AcquisitionReference:
    images = decode_measured(cell_bytes, DEFAULT_MAX_PIXELS)
    return reference_from(measure_images(images), [c.label for c in picked])


@pytest.fixture(scope="module")
def truth(picked):
    """A stand-in for the network that calls every cell its true class (the refinement's ideal case)."""
    labels = np.array([CELL_CLASSES.index(c.label) for c in picked])
    return lambda pixels: labels[: len(pixels)]


def _spec(reference: AcquisitionReference) -> InputSpec:
    return InputSpec(size=64, crop=0.75, acquisition_reference=tuple(reference.to_list()))


def _fit(datas, spec, classify):
    return fit_correction(decode_measured(datas, DEFAULT_MAX_PIXELS), spec, classify)


def test_reference_of_pbc_cells_is_plausible(reference):
    # a PBC cell spans about 0.4 of the 360 px image; the background is bright (OD well below 0.5)
    assert 0.3 < reference.diameter_fraction < 0.5
    assert all(0 <= v < 0.5 for v in reference.background_od)
    sizes = dict(zip(CELL_CLASSES, reference.class_diameter_fraction, strict=True))
    assert sizes["lymphocyte"] < 0.8 * min(sizes["neutrophil"], sizes["monocyte"])  # lymphocytes are small


def test_the_same_cells_need_no_correction(cell_bytes, reference, truth):
    c = _fit(cell_bytes, _spec(reference), truth)
    assert c.scale == pytest.approx(1.0) and c.crop == pytest.approx(0.75)
    assert np.allclose(c.od_shift, 0.0) and not c.note


@pytest.mark.parametrize(("shift", "expected"), [("rescale 0.5 (half the magnification)", 0.5), ("rescale 1.6", 1.6)])
def test_a_magnified_or_reduced_sample_is_framed_back(cell_bytes, reference, truth, shift, expected):
    shifted = [STRESS_SHIFTS[shift](d) for d in cell_bytes]
    c = _fit(shifted, _spec(reference), truth)
    assert c.scale == pytest.approx(expected, rel=0.1)
    # framed with the corrected crop, the located cells are back at the reference size
    spec = _spec(reference)
    framed = [decode_corrected(d, spec, c, DEFAULT_MAX_PIXELS).pixels for d in shifted[:30]]
    plain = [decode_cell(d, 64, crop=0.75).pixels for d in cell_bytes[:30]]
    from wbcv.inference.locate import locate_cells

    def median_size(images):
        return np.median([w.diameter_px for w in locate_cells(images, work_size=64) if w.found])

    assert median_size(framed) == pytest.approx(median_size(plain), rel=0.12)


def test_a_change_within_the_measurement_noise_is_not_applied(cell_bytes, reference, truth):
    from wbcv.validation.model_evaluation import _pil_shift, _zoom

    shifted = [_pil_shift(_zoom(1.03))(d) for d in cell_bytes]
    assert _fit(shifted, _spec(reference), truth).is_identity
    assert not _fit([_pil_shift(_zoom(1.2))(d) for d in cell_bytes], _spec(reference), truth).is_identity


def test_a_yellow_light_is_undone(cell_bytes, reference, truth):
    shifted = [STRESS_SHIFTS["yellow cast (blue x0.8)"](d) for d in cell_bytes]
    c = _fit(shifted, _spec(reference), truth)
    assert c.od_shift[2] == pytest.approx(math.log(0.8), abs=0.03)  # blue OD was raised by -ln 0.8
    assert abs(c.od_shift[0]) < 0.03 and abs(c.od_shift[1]) < 0.03
    a = decode_cell(shifted[0], 64).pixels
    b = decode_cell(cell_bytes[0], 64).pixels
    restored = apply_colour(a, c).astype(int)
    assert np.abs(restored - b.astype(int)).mean() < np.abs(a.astype(int) - b.astype(int)).mean() / 2


def test_too_few_cells_or_no_reference_means_no_correction(cell_bytes, reference, truth):
    few = cell_bytes[: MIN_CELLS - 5]
    c = _fit(few, _spec(reference), truth)
    assert c.is_identity and f"fewer than {MIN_CELLS}" in c.note
    assert _fit(cell_bytes, InputSpec(size=64, crop=0.75), truth).is_identity


def test_the_scale_follows_the_classes_not_the_case_mix(picked, cell_bytes, reference, truth):
    """A sample of lymphocytes only: its median cell is small, but so is a lymphocyte."""
    lymph = [i for i, c in enumerate(picked) if c.label == "lymphocyte"]
    datas = [cell_bytes[i] for i in lymph]
    labels = np.full(len(lymph), CELL_CLASSES.index("lymphocyte"))
    c = _fit(datas, _spec(reference), lambda px: labels[: len(px)])
    assert c.scale == pytest.approx(1.0, abs=0.08)
    # the median alone (no refinement: a model that calls every cell a neutrophil) would shrink them
    neutrophil = np.full(len(lymph), CELL_CLASSES.index("neutrophil"))
    assert _fit(datas, _spec(reference), lambda px: neutrophil[: len(px)]).scale < 0.85


def test_an_implausible_factor_is_bounded_and_said(cell_bytes, reference, truth):
    ref = reference.to_list()
    sizes = [v / 8 for v in ref[:6]]  # a library whose cells were 8 times smaller than these
    spec = InputSpec(size=64, crop=0.75, acquisition_reference=(*sizes, *ref[6:]))
    c = _fit(cell_bytes, spec, truth)
    assert c.scale == 2.5 and "bounded" in c.note and c.crop == pytest.approx(0.75 * 2.5)


def test_a_crop_wider_than_the_image_is_padded_with_its_border(cell_bytes, reference, truth):
    ref = reference.to_list()
    spec = InputSpec(size=64, crop=0.75, acquisition_reference=(*[v / 1.5 for v in ref[:6]], *ref[6:]))
    c = _fit(cell_bytes, spec, truth)  # Tecom-like: the cells fill 1.5 times the training share
    assert c.crop > 1
    pixels = decode_corrected(cell_bytes[0], spec, c, DEFAULT_MAX_PIXELS).pixels
    assert pixels.shape == (64, 64, 3)
    inner = round(64 / c.crop)
    margin = (64 - inner) // 2
    assert margin >= 1 and np.ptp(pixels[0].astype(int), axis=0).max() == 0  # first row: one colour


def test_card_round_trip_and_bad_reference(reference):
    spec = _spec(reference)
    assert InputSpec(**_input_kwargs(input_card(spec))) == spec
    with pytest.raises(ValueError, match="acquisition reference"):
        _input_kwargs({**input_card(spec), "acquisition_reference": [1.5, *reference.to_list()[1:]]})
    with pytest.raises(ValueError, match="acquisition reference"):
        _input_kwargs({**input_card(spec), "acquisition_reference": [0.39, 0.0, 0.11, 0.23]})
    assert evenly_spaced(5) == [0, 1, 2, 3, 4] and len(evenly_spaced(1000)) == MAX_MEASURED


def test_runner_and_evaluation_frame_a_sample_alike(tmp_path: Path, pbc_cells, reference):
    ref = reference.to_list()
    # a library whose cells were 1.5 times smaller and whose stain hue was 25 degrees away: PBC
    # samples are then corrected (scale, padding and hue), not framed as trained
    spec = InputSpec(
        size=64, crop=0.75, acquisition_reference=(*[v / 1.5 for v in ref[:6]], *ref[6:9], ref[9] + 25, ref[10])
    )
    model = load_artifact(write_test_artifact(tmp_path / "m", spec=spec, name="test-acquisition"))
    batch = build_slide_set(pbc_cells, tmp_path / "batch", n_samples=1, cells_per_slide=30, seed=11)
    result = run_inference(read_slide_set(batch), model, tmp_path / "runs", InferenceParams(chunk_size=8), False)
    pred = pl.read_parquet(result.run_dir / PREDICTIONS_FILE)
    assert pred["acquisition_scale"].null_count() == 0 and pred["acquisition_scale"].n_unique() == 1
    assert pred["acquisition_scale"][0] == pytest.approx(1.5, rel=0.15)
    decoded = decode_files(model, [batch / p for p in pred["cell_path"]])
    assert decoded.correction is not None and decoded.correction.hue_degrees == pytest.approx(
        25, abs=6
    )  # 30 cells vs the 125 of the reference
    assert decoded.correction.scale == pytest.approx(pred["acquisition_scale"][0], rel=1e-6)
    scored = score_pixels(model, decoded.pixels, decoded.no_cell)
    assert np.allclose(scored.combined.probabilities.numpy()[:, :5], pred.select("^p_.*$").to_numpy(), atol=1e-5)


def test_fit_acquisition_reproduces_the_bundled_reference(tmp_path: Path):
    import json
    import shutil

    from wbcv.inference.artifact import resolve_model_path

    bundled = resolve_model_path(None)
    copy = tmp_path / "m"
    shutil.copytree(bundled, copy)
    card = json.loads((copy / "model.json").read_text())
    shipped = card["input"].pop("acquisition_reference")
    (copy / "model.json").write_text(json.dumps(card))
    done = run_wbcv("fit-acquisition", str(copy), "--cells", str(PBC_DIR))
    assert done.returncode == 0, done.stderr
    assert "lymphocyte" in done.stdout
    assert json.loads((copy / "model.json").read_text())["input"]["acquisition_reference"] == shipped


def test_fit_acquisition_names_a_missing_library(tmp_path: Path, model_dir):

    done = run_wbcv("fit-acquisition", str(model_dir), "--cells", str(tmp_path / "nowhere"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "nowhere" in done.stderr and "not a folder" in done.stderr


def test_a_stain_of_another_hue_is_turned_back_and_a_grayscale_one_is_left(cell_bytes, reference, truth):
    assert _fit(cell_bytes, _spec(reference), truth).hue_degrees == 0.0
    turned = _fit([STRESS_SHIFTS["hue +40 degrees"](d) for d in cell_bytes], _spec(reference), truth)
    assert 25 < turned.hue_degrees < 50  # Pillow's HSV hue turn, measured in the YIQ plane
    gray = _fit([STRESS_SHIFTS["grayscale"](d) for d in cell_bytes], _spec(reference), truth)
    assert gray.hue_degrees == 0.0  # no chroma to measure a hue from


def test_the_hue_rotation_keeps_each_pixels_luma():
    from wbcv.inference.acquisition import SampleCorrection

    rng = np.random.default_rng(0)
    pixels = rng.integers(100, 156, (32, 32, 3), dtype=np.uint8)  # stain-like: turned, they stay in gamut
    out = apply_colour(pixels, SampleCorrection(0.75, (0.0, 0.0, 0.0), 30, 1.0, "", 30.0))
    luma = np.array([0.299, 0.587, 0.114])
    assert not np.array_equal(out, pixels)
    assert np.abs(out.astype(float) @ luma - pixels.astype(float) @ luma).max() < 0.75  # rounding only


def test_decode_files_frames_with_a_given_correction(tmp_path: Path, picked, reference):
    """How the white-cell gate sees negatives as they would sit in a sample of their lab's white cells."""
    from wbcv.inference.acquisition import SampleCorrection

    model = load_artifact(write_test_artifact(tmp_path / "m", spec=_spec(reference), name="test-given"))
    given = SampleCorrection(0.75 * 1.5, (0.0, 0.05, -0.1), 64, 1.5, "", 20.0)
    paths = [c.path for c in picked[:6]]
    decoded = decode_files(model, paths, correction=given)
    assert decoded.correction is given
    expected = [decode_corrected(p.read_bytes(), model.input, given, DEFAULT_MAX_PIXELS).pixels for p in paths]
    assert np.array_equal(decoded.pixels, np.stack(expected))
