"""The batch runner on real cells: outputs, skipped cells, determinism, resumption, sealing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from wbcv.base import runstore
from wbcv.base.tables import (
    COUNT_COLUMNS,
    COUNTS_FILE,
    INPUTS_FILE,
    PREDICTION_SCHEMA,
    PREDICTIONS_FILE,
    RUN_TABLES,
    SKIPPED_FILE,
)
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.inference.artifact import load_artifact
from wbcv.inference.runner import InferenceParams, run_inference
from wbcv.inference.slideset import read_slide_set

PARAMS = InferenceParams(chunk_size=16, workers=2)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_artifact(model_dir)


@pytest.fixture
def batch(tmp_path: Path, pbc_cells) -> Path:
    return build_slide_set(pbc_cells, tmp_path / "batch", n_samples=4, cells_per_slide=20, seed=7)


def _run(batch: Path, model, runs: Path, params: InferenceParams = PARAMS):
    return run_inference(read_slide_set(batch), model, runs, params, progress=False)


def test_run_writes_predictions_counts_and_input_hashes(batch, model, tmp_path):
    result = _run(batch, model, tmp_path / "runs")
    run = result.run_dir
    assert sorted(p.name for p in run.iterdir()) == sorted([*RUN_TABLES, "run.json", "log.txt"])
    pred = pl.read_parquet(run / PREDICTIONS_FILE)
    assert pred.schema == pl.Schema(PREDICTION_SCHEMA)
    assert pred.height == 80 and pred["sample_id"].n_unique() == 4
    # the true labels from cell_labels.csv travel with each cell
    assert pred["expert_label"].null_count() == 0
    assert set(pred["expert_label"]) <= set(CELL_CLASSES)
    # the content hash of every cell is the sha256 of its file
    row = pred.row(0, named=True)
    assert row["sha256"] == hashlib.sha256((batch / row["cell_path"]).read_bytes()).hexdigest()
    # probabilities are distributions and the unclassified flag agrees with the class column
    p = pred.select(pl.sum_horizontal(f"p_{c}" for c in CELL_CLASSES)).to_series()
    assert (p - 1).abs().max() < 1e-5
    assert (pred["unclassified"] == (pred["predicted_class"] == "unclassified")).all()
    assert (pred["unclassified"] == pred["abstain_reason"].is_not_null()).all()

    counts = pl.read_parquet(run / COUNTS_FILE)
    assert counts.columns == list(COUNT_COLUMNS)
    for r in counts.iter_rows(named=True):
        mine = pred.filter(pl.col("sample_id") == r["sample_id"])
        assert r["n_cells"] == mine.height == 20
        assert r["n_unclassified"] == int(mine["unclassified"].sum())
        assert sum(r[f"k_{c}"] for c in CELL_CLASSES) == r["n_classified"] == 20 - r["n_unclassified"]
        for c in CELL_CLASSES:
            assert r[f"k_{c}"] == int((mine["predicted_class"] == c).sum())
            if r["n_classified"]:
                assert r[f"fraction_{c}"] == pytest.approx(r[f"k_{c}"] / r["n_classified"])

    record = json.loads((run / "run.json").read_text())
    assert record["model"]["sha256"] == model.sha256
    assert record["batch"]["n_samples"] == 4 and record["parameters"]["chunk_size"] == 16
    for name in RUN_TABLES:
        assert record["files"][name] == hashlib.sha256((run / name).read_bytes()).hexdigest()
    inputs = pl.read_parquet(run / INPUTS_FILE)
    assert set(inputs["path"]) == {"manifest.csv", "cell_labels.csv", *pred["cell_path"]}
    listing = "".join(f"{h}  {p}\n" for p, h in zip(inputs["path"], inputs["sha256"], strict=True))
    assert record["batch"]["inputs_sha256"] == hashlib.sha256(listing.encode()).hexdigest()


def test_finished_run_is_read_only_and_no_working_files_remain(batch, model, tmp_path):
    run = _run(batch, model, tmp_path / "runs").run_dir
    assert not stat.S_IMODE(run.stat().st_mode) & 0o222
    assert all(not stat.S_IMODE(p.stat().st_mode) & 0o222 for p in run.iterdir())
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run.name]


def test_bad_cells_are_skipped_counted_and_recorded_with_reasons(batch, model, tmp_path):
    slide = batch / "S00001"
    good = (slide / "cell0000.jpg").read_bytes()
    (slide / "cell0001.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (slide / "cell0002.jpg").write_bytes(b"<html>not an image</html>")  # mislabelled non-image
    (slide / "zz_notes.txt").write_text("scanner log")  # non-image file
    buf = io.BytesIO()
    Image.open(io.BytesIO(good)).convert("L").save(buf, format="PNG")
    (slide / "zz_gray.png").write_bytes(buf.getvalue())  # grayscale: usable, converted
    (batch / "stray_folder").mkdir()

    result = _run(batch, model, tmp_path / "runs")
    run = result.run_dir
    skipped = pl.read_parquet(run / SKIPPED_FILE)
    reasons = dict(zip(skipped["path"], skipped["reason"], strict=True))
    assert "corrupt or truncated" in reasons["S00001/cell0001.jpg"]
    assert "not a readable image" in reasons["S00001/cell0002.jpg"]
    assert "not a cell image file" in reasons["S00001/zz_notes.txt"]
    assert "not listed in the manifest" in reasons["stray_folder/"]
    counts = pl.read_parquet(run / COUNTS_FILE).filter(pl.col("sample_id") == "S00001").row(0, named=True)
    assert (counts["n_files"], counts["n_skipped"], counts["n_cells"]) == (22, 3, 19)
    pred = pl.read_parquet(run / PREDICTIONS_FILE)
    gray = pred.filter(pl.col("cell_path") == "S00001/zz_gray.png").row(0, named=True)
    assert gray["source_mode"] == "L"
    s = result.record.summary
    assert (s.n_skipped_cells, s.n_unlisted_folders, s.n_cells) == (3, 1, 79)


def test_same_inputs_give_identical_tables(batch, model, tmp_path):
    a = _run(batch, model, tmp_path / "a").run_dir
    b = _run(batch, model, tmp_path / "b").run_dir
    for name in RUN_TABLES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_chunking_does_not_change_predictions_much(batch, model, tmp_path):
    """Chunk size is part of a run's identity because batch composition may change float rounding;
    the predictions themselves must agree."""
    a = pl.read_parquet(_run(batch, model, tmp_path / "a").run_dir / PREDICTIONS_FILE)
    b = pl.read_parquet(
        _run(batch, model, tmp_path / "b", InferenceParams(chunk_size=7, workers=1)).run_dir / PREDICTIONS_FILE
    )
    assert (a["predicted_class"] == b["predicted_class"]).all()
    assert (a["p_neutrophil"] - b["p_neutrophil"]).abs().max() < 1e-4


class Boom(Exception):
    pass


def test_interrupted_run_resumes_without_redoing_slides(batch, model, tmp_path, monkeypatch):
    reference = _run(batch, model, tmp_path / "reference").run_dir
    runs = tmp_path / "runs"
    real_write = runstore.WorkingRun.write_part
    written: list[int] = []
    die_after = [2]

    def write_then_die(self, index, frame):
        real_write(self, index, frame)
        written.append(index)
        if len(written) == die_after[0]:
            raise Boom

    monkeypatch.setattr(runstore.WorkingRun, "write_part", write_then_die)
    with pytest.raises(Boom):
        _run(batch, model, runs)
    assert len(list(runs.glob(".incomplete-*/parts/*.parquet"))) == 2

    written.clear()
    die_after[0] = -1
    result = _run(batch, model, runs)
    assert result.resumed and result.slides_done_before == 2
    assert sorted(written) == [2, 3]  # only the unfinished slides were classified
    for name in RUN_TABLES:
        assert (result.run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    assert [p.name for p in runs.iterdir()] == [result.run_dir.name]


def test_crash_while_sealing_is_finished_by_the_next_attempt(batch, model, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    real_rename = os.rename

    def failing_rename(src, dst):
        raise OSError(5, "simulated crash before the commit")

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        _run(batch, model, runs)
    monkeypatch.setattr(os, "rename", real_rename)
    result = _run(batch, model, runs)
    assert result.resumed and result.slides_done_before == 4
    assert [p.name for p in runs.iterdir()] == [result.run_dir.name]


def test_crash_after_the_commit_does_not_make_a_second_run(batch, model, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    real_remove = runstore.remove_tree
    calls = []

    def fail_on_cleanup(path):
        if path.name.startswith(runstore.INCOMPLETE_PREFIX) and not calls:
            calls.append(path)
            raise OSError(5, "simulated crash after the commit")
        real_remove(path)

    monkeypatch.setattr(runstore, "remove_tree", fail_on_cleanup)
    with pytest.raises(OSError):
        _run(batch, model, runs)
    result = _run(batch, model, runs)
    assert result.already_finished
    assert [p.name for p in runs.iterdir()] == [result.run_dir.name]


def test_changed_batch_is_a_new_run_not_a_resume(batch, model, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setattr(runstore.WorkingRun, "write_part", lambda *a: (_ for _ in ()).throw(Boom()))
    with pytest.raises(Boom):
        _run(batch, model, runs)
    monkeypatch.undo()
    (batch / "S00000" / "cell0000.jpg").write_bytes((batch / "S00000" / "cell0001.jpg").read_bytes())
    result = _run(batch, model, runs)
    assert not result.resumed
