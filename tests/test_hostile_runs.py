"""Issue 19, class 6: one bad run folder is skipped and named, never takes down the dashboard."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dashboard_support import make_study_runs
from wbcv.base.errors import WbcvError
from wbcv.base.runstore import MAX_RUN_RECORD_BYTES, RUN_RECORD, read_run_record
from wbcv.dashboards.app import create_app
from wbcv.dashboards.data import RunCatalog


@pytest.fixture(scope="module")
def good_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study_runs(
        tmp_path_factory.mktemp("hostile-runs"), n_samples=4, cells_per_slide=10, untrained_model=False
    )


def _comparison(runs: Path) -> Path:
    return next(p for p in sorted(runs.iterdir()) if "-compare-" in p.name)


def _bad(runs: Path, name: str = "bad-run") -> Path:
    folder = runs / name
    folder.mkdir()
    return folder


def deep(runs: Path) -> tuple[str, str]:
    (_bad(runs) / RUN_RECORD).write_text("[" * 100_000 + "]" * 100_000)
    return "bad-run", "nested too deeply"


def not_json(runs: Path) -> tuple[str, str]:
    (_bad(runs) / RUN_RECORD).write_text("this is not json {")
    return "bad-run", "unreadable run record"


def binary(runs: Path) -> tuple[str, str]:
    (_bad(runs) / RUN_RECORD).write_bytes(bytes(range(256)) * 10)
    return "bad-run", "unreadable run record"


def oversized(runs: Path) -> tuple[str, str]:
    with open(_bad(runs) / RUN_RECORD, "wb") as f:
        f.truncate(MAX_RUN_RECORD_BYTES + 1)  # sparse: no disk used
    return "bad-run", "MiB limit"


def copied(runs: Path) -> tuple[str, str]:
    shutil.copytree(_comparison(runs), runs / "copy-of-a-run")
    return "copy-of-a-run", "not the folder's name"


def directory(runs: Path) -> tuple[str, str]:
    (_bad(runs) / RUN_RECORD).mkdir()
    return "bad-run", "not a regular file"


def fifo(runs: Path) -> tuple[str, str]:
    os.mkfifo(_bad(runs) / RUN_RECORD)
    return "bad-run", "not a regular file"


VARIANTS: list[Callable[[Path], tuple[str, str]]] = [deep, not_json, binary, oversized, copied, directory, fifo]


def _with_bad(good_runs: Path, tmp_path: Path, variant: Callable[[Path], tuple[str, str]]) -> tuple[Path, str, str]:
    runs = tmp_path / "runs"
    shutil.copytree(good_runs, runs)
    name, reason = variant(runs)
    return runs, name, reason


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.__name__)
def test_catalog_skips_and_lists_a_bad_run(good_runs, tmp_path, variant):
    expected = {s.run_id for s in RunCatalog(good_runs).summaries()}
    assert expected
    runs, name, reason = _with_bad(good_runs, tmp_path, variant)
    catalog = RunCatalog(runs)
    assert {s.run_id for s in catalog.summaries()} == expected
    [(bad_name, bad_reason)] = catalog.unreadable()
    assert bad_name == name
    assert reason in bad_reason


@pytest.mark.parametrize("variant", [deep, not_json, binary, oversized, directory, fifo], ids=lambda v: v.__name__)
def test_read_run_record_refuses_hostile_records(tmp_path, variant):
    name, reason = variant(tmp_path)
    with pytest.raises(WbcvError, match=RUN_RECORD) as e:
        read_run_record(tmp_path / name)
    assert reason in str(e.value)


def test_two_folders_with_the_same_run_id(good_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(good_runs, runs)
    original = _comparison(runs)
    shutil.copytree(original, runs / (original.name + "-copy"))
    catalog = RunCatalog(runs)
    assert original.name in {s.run_id for s in catalog.summaries()}
    assert [n for n, _ in catalog.unreadable()] == [original.name + "-copy"]


@pytest.mark.parametrize("variant", [deep, copied, fifo], ids=lambda v: v.__name__)
def test_dashboard_builds_with_a_bad_run(good_runs, tmp_path, variant):
    runs, name, reason = _with_bad(good_runs, tmp_path, variant)
    app = create_app(runs)
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    layout = client.get("/_dash-layout")
    assert layout.status_code == 200
    text = layout.get_data(as_text=True)
    assert "1 run folder(s) could not be read" in text
    assert name in text and reason in text
    first = RunCatalog(good_runs).summaries()[0].run_id
    assert first in text


@pytest.mark.parametrize("tamper", ["edit", "delete"])
def test_a_comparison_run_whose_sealed_statistics_changed_is_not_shown_as_its_own(good_runs, tmp_path, tamper):
    """statistics.json (or any sealed file) edited or deleted after sealing: the run leaves the runs
    list and is listed as unreadable, 'altered since it was sealed', naming the file."""
    runs = tmp_path / "runs"
    shutil.copytree(good_runs, runs)
    run = _comparison(runs)
    stats = run / "statistics.json"
    if tamper == "edit":
        stats.write_text(stats.read_text().replace("0", "1", 1))
    else:
        stats.unlink()
    catalog = RunCatalog(runs)
    assert run.name not in {s.run_id for s in catalog.summaries()}
    [(bad_name, reason)] = catalog.unreadable()
    assert bad_name == run.name
    assert (
        "altered since it was sealed" in reason
        and f"statistics.json {'changed' if tamper == 'edit' else 'missing'}" in reason
    )
