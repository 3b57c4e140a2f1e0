"""The Ray engine on real cells against the local engine: same tables, an actor killed mid-batch,
a missing image, the command line, and the message when Ray is not installed.

One local Ray instance (2 CPUs, small object store) serves the whole module, as in CI.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import ray
from polars.testing import assert_frame_equal

from tests.conftest import run_wbcv
from wbcv import cli
from wbcv.base import runstore
from wbcv.base.tables import COUNTS_FILE, PREDICTIONS_FILE, RUN_TABLES, SKIPPED_FILE
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.inference.artifact import load_artifact
from wbcv.inference.ray_engine import ChunkClassifier, RayOptions, run_inference_ray
from wbcv.inference.runner import InferenceParams, InferenceResult, run_inference
from wbcv.inference.slideset import read_slide_set

# 10 cells a chunk: 24-cell slides are cut into 10 + 10 + 4, so chunk boundaries matter.
PARAMS = InferenceParams(chunk_size=10, workers=2)
# Where the fault-injecting actor below finds its trigger; set for the workers by ray.init.
CRASH_DIR_ENV = "WBCV_TEST_RAY_CRASH_DIR"
MISSING = "S00002/cell0005.jpg"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    crash_dir = tmp_path_factory.mktemp("crash")
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=150 * 2**20,
        include_dashboard=False,
        runtime_env={"env_vars": {CRASH_DIR_ENV: str(crash_dir)}},
    )
    yield {"address": ray.get_runtime_context().gcs_address, "crash_dir": crash_dir}
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    # the bundled, trained model: real cells get real, varied classes (an untrained one abstains on most)
    return load_artifact(None)


@pytest.fixture(scope="module")
def batch(tmp_path_factory, pbc_cells):
    """Four slides of 24 real cells plus a truncated JPEG, a non-image file, and a fifth slide
    none of whose files decode (a chunk without a single cell for the model)."""
    root = build_slide_set(pbc_cells, tmp_path_factory.mktemp("b") / "batch", n_samples=4, cells_per_slide=24, seed=3)
    good = (root / "S00001" / "cell0000.jpg").read_bytes()
    (root / "S00001" / "cell0007.jpg").write_bytes(good[: len(good) // 3])
    (root / "S00003" / "zz_notes.txt").write_text("scanner log")
    (root / "S00004").mkdir()
    (root / "S00004" / "cell0000.jpg").write_bytes(b"<html>not an image</html>")
    with open(root / "manifest.csv", "a") as f:
        f.write("S00004\n")
    return root


@pytest.fixture(scope="module")
def slides(batch):
    """The batch as listed; then one image disappears, as on a worker whose mount lost it."""
    listed = read_slide_set(batch)
    (batch / MISSING).unlink()
    return listed


@pytest.fixture(scope="module")
def local_run(slides, model, tmp_path_factory) -> InferenceResult:
    return run_inference(slides, model, tmp_path_factory.mktemp("local"), PARAMS, progress=False)


@pytest.fixture(scope="module")
def ray_run(ray_cluster, slides, model, tmp_path_factory) -> InferenceResult:
    return run_inference_ray(
        slides, model, tmp_path_factory.mktemp("ray"), PARAMS, RayOptions(actors=1), progress=False
    )


def _tables(run_dir: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(run_dir / name) for name in RUN_TABLES}


def test_ray_engine_gives_the_local_engines_tables(local_run, ray_run):
    local, distributed = _tables(local_run.run_dir), _tables(ray_run.run_dir)
    pred = local[PREDICTIONS_FILE]
    # the batch exercises what it should: classified and abstained cells, several slides, skips
    assert pred.height == 4 * 24 - 2 and pred["sample_id"].n_unique() == 4
    assert 0 < pred["unclassified"].sum() < pred.height and pred["predicted_class"].n_unique() >= 4
    assert local[SKIPPED_FILE].height == 4
    for name in RUN_TABLES:
        # Every column, floats to the bit; no table holds a time or anything else per session.
        assert_frame_equal(distributed[name], local[name], check_exact=True)
        assert (ray_run.run_dir / name).read_bytes() == (local_run.run_dir / name).read_bytes(), name


def test_ray_run_record_differs_only_where_the_session_does(local_run, ray_run):
    a, b = local_run.record, ray_run.record
    assert a.engine == {"name": "local"}
    assert b.engine["name"] == "ray" and b.engine["ray_version"] == ray.__version__
    assert b.engine["address"] == "local" and b.engine["actors"] == 1
    # the run key (run id suffix) does not depend on the engine
    assert a.run_id.rsplit("-", 1)[1] == b.run_id.rsplit("-", 1)[1]
    assert (a.batch, a.model, a.parameters) == (b.batch, b.model, b.parameters)
    assert {n: a.files[n] for n in RUN_TABLES} == {n: b.files[n] for n in RUN_TABLES}
    assert replace(a.summary, wall_seconds_last_session=0) == replace(b.summary, wall_seconds_last_session=0)
    # the domain check (the bundled model has a profile) is recorded by both engines alike
    assert a.domain == b.domain and a.domain.verdict == "in_domain" and a.domain.score is not None
    assert "(engine ray)" in (ray_run.run_dir / "log.txt").read_text()


def test_missing_image_on_a_worker_is_recorded_like_the_local_engine(local_run, ray_run):
    def row(run: InferenceResult) -> dict:
        skipped = pl.read_parquet(run.run_dir / SKIPPED_FILE)
        return skipped.filter(pl.col("path") == MISSING).row(0, named=True)

    got = row(ray_run)
    assert got == row(local_run)
    assert got["reason"] == "cannot read file: No such file or directory" and got["sha256"] is None
    counts = pl.read_parquet(ray_run.run_dir / COUNTS_FILE).filter(pl.col("sample_id") == "S00002")
    assert counts.select("n_files", "n_skipped", "n_cells").row(0) == (24, 1, 23)
    empty = pl.read_parquet(ray_run.run_dir / COUNTS_FILE).filter(pl.col("sample_id") == "S00004")
    assert empty.select("n_files", "n_skipped", "n_cells").row(0) == (1, 1, 0)


class CrashOnThirdCall(ChunkClassifier):
    """Kills its own process (no clean-up, as a segfault or OOM kill would) on its third chunk,
    once per armed trigger file: the first actor to remove the file dies."""

    calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        self.calls += 1
        if self.calls == 3:
            crash_dir = Path(os.environ[CRASH_DIR_ENV])
            try:
                (crash_dir / "armed").unlink()
            except FileNotFoundError:
                pass
            else:
                (crash_dir / "crashed").write_text(
                    json.dumps({"pid": os.getpid(), "chunk": int(batch["chunk_index"][0])})
                )
                os._exit(1)
        return super().__call__(batch)


class Interrupted(Exception):
    pass


def test_ray_finishes_an_interrupted_local_run_through_an_actor_killed_mid_batch(
    ray_cluster, slides, model, local_run, tmp_path, monkeypatch
):
    """Two faults in one Ray session (a Ray run costs seconds of worker start-up on 2 cores): the
    run was interrupted under the local engine after two slides, and an actor dies mid-batch."""
    runs = tmp_path / "runs"
    real_write = runstore.WorkingRun.write_part

    def write_two_then_stop(self, index, frame):
        if index == 2:
            raise Interrupted
        real_write(self, index, frame)

    monkeypatch.setattr(runstore.WorkingRun, "write_part", write_two_then_stop)
    with pytest.raises(Interrupted):
        run_inference(slides, model, runs, PARAMS, progress=False)
    monkeypatch.undo()

    crash_dir: Path = ray_cluster["crash_dir"]
    (crash_dir / "armed").write_text("")
    result = run_inference_ray(
        slides, model, runs, PARAMS, RayOptions(actors=1), progress=False, classifier=CrashOnThirdCall
    )
    # the same run key: Ray resumed the local engine's run and did only the three unfinished slides
    assert result.resumed and result.slides_done_before == 2
    log = (result.run_dir / "log.txt").read_text()
    assert "started (engine local)" in log and "resumed (engine ray): 2 of 5 slides done" in log
    # the actor did die mid-batch, in a process other than this one, and was replaced
    assert not (crash_dir / "armed").exists()
    crashed = json.loads((crash_dir / "crashed").read_text())
    assert crashed["pid"] != os.getpid() and crashed["chunk"] >= 0
    # nothing lost, nothing doubled: the uninterrupted local run's tables, to the byte
    pred = pl.read_parquet(result.run_dir / PREDICTIONS_FILE)
    assert pred["cell_path"].is_unique().all()
    for name in RUN_TABLES:
        assert_frame_equal(pl.read_parquet(result.run_dir / name), _tables(local_run.run_dir)[name], check_exact=True)
        assert (result.run_dir / name).read_bytes() == (local_run.run_dir / name).read_bytes(), name
    assert [p.name for p in runs.iterdir()] == [result.run_dir.name]


def test_cli_engine_ray_on_an_existing_cluster(ray_cluster, pbc_cells, model, tmp_path):
    """`wbcv infer --engine ray --address HOST:PORT`: a fresh process joins the running cluster."""
    batch = build_slide_set(pbc_cells, tmp_path / "batch", n_samples=2, cells_per_slide=12, seed=5)
    local = run_inference(read_slide_set(batch), model, tmp_path / "local", PARAMS, progress=False)
    runs = tmp_path / "runs"
    r = run_wbcv(
        "infer",
        str(batch),
        "--out",
        str(runs),
        "--engine",
        "ray",
        "--address",
        ray_cluster["address"],
        "--chunk-size",
        str(PARAMS.chunk_size),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "24 cells classified in 2 samples" in r.stdout
    (run_dir,) = runs.iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["engine"]["name"] == "ray" and record["engine"]["address"] == ray_cluster["address"]
    for name in RUN_TABLES:
        assert_frame_equal(pl.read_parquet(run_dir / name), pl.read_parquet(local.run_dir / name), check_exact=True)


def test_engine_ray_without_ray_says_how_to_install_it(batch, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code = cli.main(["infer", str(batch), "--out", str(tmp_path), "--engine", "ray"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_INPUT_ERROR
    assert "pip install 'wbcv[ray]'" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # failed before any run was started


def test_ray_options_only_with_the_ray_engine(batch, tmp_path, capsys):
    code = cli.main(["infer", str(batch), "--out", str(tmp_path), "--address", "auto"])
    assert code == cli.EXIT_INPUT_ERROR
    assert "--engine ray" in capsys.readouterr().err


def test_ray_engine_frames_a_corrected_sample_like_the_local_engine(ray_cluster, slides, model, tmp_path):
    """A model whose training cells were 1.5 times smaller and 25 degrees of hue away: every PBC
    sample is corrected (crop above 1, padding, hue turn), measured on the driver for Ray."""
    ref = list(model.input.acquisition_reference)
    shifted = (*[v / 1.5 for v in ref[:6]], *ref[6:9], ref[9] + 25, ref[10])
    other = replace(model, input=replace(model.input, acquisition_reference=shifted))
    local = run_inference(slides, other, tmp_path / "local", PARAMS, progress=False)
    distributed = run_inference_ray(slides, other, tmp_path / "ray", PARAMS, RayOptions(actors=1), progress=False)
    pred = pl.read_parquet(local.run_dir / PREDICTIONS_FILE)
    assert (pred["acquisition_scale"] > 1.2).all()
    for name in RUN_TABLES:
        assert_frame_equal(_tables(distributed.run_dir)[name], _tables(local.run_dir)[name], check_exact=True)
