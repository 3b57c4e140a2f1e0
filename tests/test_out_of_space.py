"""Issue 19, class 5: a full disk during a run or at sealing is exit 2 with a one-line message naming
the file, and the same command run again after space is freed resumes and finishes."""

from __future__ import annotations

import errno
from pathlib import Path

import polars as pl
import pytest

from tests.dashboard_support import PROTOCOL_TEXT
from wbcv.base import runstore
from wbcv.cli import EXIT_FAILED_ACCEPTANCE, EXIT_INPUT_ERROR, EXIT_OK, main
from wbcv.fixtures.phantom import PHANTOM_MODEL, write_phantom_library
from wbcv.fixtures.simulator import simulate_study
from wbcv.inference.library import read_cell_library


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("no-space")
    library = write_phantom_library(out / "library", 12, seed=1)
    simulate_study(read_cell_library(library), out / "study", 3, 10, seed=3)
    protocol = out / "protocol.yaml"
    protocol.write_text(PROTOCOL_TEXT.replace("min_cells: 100", "min_cells: 5"))
    return out / "study", protocol


def _command(study: tuple[Path, Path], runs: Path) -> list[str]:
    batch, protocol = study
    return [
        "run", str(batch), "--protocol", str(protocol), "--model", PHANTOM_MODEL,
        "--reference", str(batch / "XN_SAMPLE.csv"), "--out", str(runs), "--no-progress",
    ]  # fmt: skip


def _os_full(path: Path) -> BaseException:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def _polars_full(path: Path) -> BaseException:
    return pl.exceptions.ComputeError("failed to write parquet: No space left on device (os error 28)")


@pytest.mark.parametrize(
    ("when", "make_error"),
    [("part", _os_full), ("sealing", _os_full), ("part", _polars_full)],
    ids=["part-oserror", "sealing-oserror", "part-polars"],
)
def test_full_disk_is_exit_2_and_resumes(study, tmp_path, monkeypatch, capsys, when, make_error):
    runs = tmp_path / "runs"
    real = runstore.atomic_write_parquet
    failed: list[Path] = []

    def full(path: Path, frame: pl.DataFrame) -> None:
        at_sealing = Path(path).parent.name.startswith(".sealing-")
        if (when == "sealing") == at_sealing and not failed:
            failed.append(Path(path))
            raise make_error(Path(path))
        real(path, frame)

    monkeypatch.setattr(runstore, "atomic_write_parquet", full)
    assert main(_command(study, runs)) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert failed
    assert "no space left on device" in err
    assert "run the same command again to resume" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    if make_error is _os_full:
        assert str(failed[0]) in err

    monkeypatch.setattr(runstore, "atomic_write_parquet", real)
    assert main(_command(study, runs)) in (EXIT_OK, EXIT_FAILED_ACCEPTANCE)
    finished = [p for p in runs.iterdir() if not p.name.startswith(".") and (p / "run.json").is_file()]
    assert finished


def test_other_errors_still_raise(monkeypatch, study, tmp_path):
    def broken(path: Path, frame: pl.DataFrame) -> None:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(runstore, "atomic_write_parquet", broken)
    with pytest.raises(OSError, match="Input/output"):
        main(_command(study, tmp_path / "runs"))
