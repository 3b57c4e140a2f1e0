"""The command line as a user meets it: exit codes, messages without tracebacks, kill and resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_wbcv
from wbcv.base.tables import COUNTS_FILE, PREDICTIONS_FILE, RUN_TABLES
from wbcv.fixtures.slidesets import build_slide_set

wbcv = run_wbcv


@pytest.fixture(scope="module")
def batch(tmp_path_factory, pbc_cells) -> Path:
    return build_slide_set(
        pbc_cells, tmp_path_factory.mktemp("cli") / "batch", n_samples=10, cells_per_slide=24, seed=3
    )


SLOW = ["--chunk-size", "8", "--workers", "1", "--no-progress"]


@pytest.mark.slow  # starts the command line or a whole run
def test_infer_writes_a_run_and_says_where(batch, model_dir, tmp_path):
    r = wbcv("infer", str(batch), "--model", str(model_dir), "--out", str(tmp_path / "runs"), "--no-progress")
    assert r.returncode == 0, r.stderr
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1 and str(run_dirs[0]) in r.stdout
    assert "240 cells classified in 10 samples" in r.stdout
    assert (run_dirs[0] / PREDICTIONS_FILE).is_file() and (run_dirs[0] / COUNTS_FILE).is_file()


@pytest.mark.slow  # starts the command line or a whole run
@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda b: (b / "manifest.csv").write_text("sample_id,volume\nS00000,1\n"), "unknown column 'volume'"),
        (lambda b: (b / "manifest.csv").write_text("sample_id\nS00000\nS00000\n"), "duplicate sample_id 'S00000'"),
        (lambda b: (b / "manifest.csv").write_text("sample_id,slide_dir\nS00000,../../etc\n"), "contains '..'"),
        (lambda b: (b / "manifest.csv").unlink(), "no manifest"),
    ],
)
def test_bad_batch_exits_2_with_a_message_and_no_traceback(tmp_path, pbc_cells, model_dir, setup, expected):
    b = build_slide_set(pbc_cells, tmp_path / "b", n_samples=2, cells_per_slide=3, seed=0)
    setup(b)
    r = wbcv("infer", str(b), "--model", str(model_dir), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2
    assert expected in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("wbcv infer: error: ")


@pytest.mark.slow  # starts the command line or a whole run
def test_unknown_or_tampered_model_exits_2(batch, model_dir, tmp_path):
    r = wbcv("infer", str(batch), "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and "unknown model" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad-model"
    bad.mkdir()
    for f in model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "weights.pt").write_bytes((bad / "weights.pt").read_bytes()[:-10])
    r = wbcv("infer", str(batch), "--model", str(bad), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr


def test_bad_option_value_is_a_usage_error(batch, model_dir):
    r = wbcv("infer", str(batch), "--model", str(model_dir), "--chunk-size", "0")
    assert r.returncode == 2 and "expected a number of at least 1" in r.stderr


def _wait_for(predicate, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(batch, model_dir, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("reference-runs")
    r = wbcv("infer", str(batch), "--model", str(model_dir), "--out", str(runs), *SLOW)
    assert r.returncode == 0, r.stderr
    return next(runs.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["while starting", "after 1 slide", "after half the slides"])
def test_sigkill_at_any_moment_then_rerun_gives_identical_outputs(batch, model_dir, tmp_path, uninterrupted, kill_when):
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "wbcv.cli", "infer", str(batch), "--model", str(model_dir), "--out", str(runs), *SLOW]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def parts() -> int:
        return len(list(runs.glob(".incomplete-*/parts/*.parquet")))

    if kill_when == "while starting":
        time.sleep(0.3)
    else:
        _wait_for(lambda: parts() >= (1 if kill_when == "after 1 slide" else 5) or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; slow it down"
    done_before = parts()

    r = wbcv("infer", str(batch), "--model", str(model_dir), "--out", str(runs), *SLOW)
    assert r.returncode == 0, r.stderr
    finished = [p for p in runs.iterdir()]
    assert len(finished) == 1, f"expected exactly one run, found {finished}"
    if done_before:
        assert f"resumed: {done_before} of 10 slides were already done" in r.stdout
    for name in RUN_TABLES:
        assert (finished[0] / name).read_bytes() == (uninterrupted / name).read_bytes(), name


@pytest.mark.slow  # starts the command line or a whole run
def test_verify_names_every_changed_added_or_missing_file(uninterrupted, tmp_path):
    import shutil
    import stat as stat_mod

    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    for p in [run, *run.iterdir()]:
        p.chmod(p.stat().st_mode | stat_mod.S_IWUSR)
    r = wbcv("verify", str(run))
    assert r.returncode == 0 and "intact" in r.stdout and "run.json sha256" in r.stdout

    data = bytearray((run / "counts.parquet").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    (run / "counts.parquet").write_bytes(bytes(data))
    (run / "notes.txt").write_text("added later")
    (run / "log.txt").unlink()
    r = wbcv("verify", str(run))
    assert r.returncode == 4 and "NOT INTACT" in r.stdout
    assert "changed: counts.parquet" in r.stdout and "added: notes.txt" in r.stdout and "missing: log.txt" in r.stdout
    assert "predictions.parquet" not in r.stdout
