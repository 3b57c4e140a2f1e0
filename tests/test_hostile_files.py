"""Issue 19: slide-folder entries that are not regular files, or are the same file twice.

Nothing but a regular file inside the batch is ever opened; FIFOs, devices and links to them are
recorded as skipped with their reason, a second name of a file counts once, and the bytes read
per file are capped. Every whole run here is a subprocess under a time limit: a regression hangs
or exhausts memory, and the limit turns that into a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from wbcv.base.tables import COUNTS_FILE, PREDICTIONS_FILE, SKIPPED_FILE
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.inference.artifact import InputSpec
from wbcv.inference.decode import CellRejected, max_file_bytes, read_cell_file
from wbcv.inference.library import read_cell_library
from wbcv.inference.runner import decode_chunk
from wbcv.inference.slideset import read_slide_set

MAX_PIXELS = 200_000  # above a PBC crop (360 x 363), so that the cap is small enough to test
CAP = max_file_bytes(MAX_PIXELS)


@pytest.fixture
def batch(tmp_path: Path, pbc_cells) -> Path:
    return build_slide_set(pbc_cells, tmp_path / "batch", n_samples=2, cells_per_slide=6, seed=3)


@pytest.fixture
def no_hang() -> Iterator[None]:
    """In-process reads that would block forever fail after 20 s instead."""

    def fail(*_: object) -> None:
        raise TimeoutError("reading a cell blocked")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _infer(batch: Path, model_dir: Path, runs: Path) -> Path:
    r = subprocess.run(
        [sys.executable, "-m", "wbcv.cli", "infer", str(batch), "--model", str(model_dir), "--out", str(runs),
         "--no-progress", "--workers", "1", "--chunk-size", "8", "--max-image-pixels", str(MAX_PIXELS)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (run,) = runs.iterdir()
    return run


@pytest.mark.slow  # a whole run on the command line
def test_hostile_entries_are_skipped_with_reasons_and_counted_once(batch, model_dir, tmp_path):
    s0, s1 = batch / "S00000", batch / "S00001"
    os.mkfifo(s0 / "fifo.jpg")
    (s0 / "zero.jpg").symlink_to("/dev/zero")
    (s0 / "urandom.png").symlink_to("/dev/urandom")
    os.mkfifo(tmp_path / "outside.fifo")
    (s0 / "outside_fifo.jpg").symlink_to(tmp_path / "outside.fifo")
    (s0 / "inside_fifo.jpg").symlink_to("fifo.jpg")
    os.link(s0 / "cell0000.jpg", s0 / "hard.jpg")
    (s0 / "soft.jpg").symlink_to("cell0001.jpg")
    with open(s0 / "big.jpg", "wb") as f:  # a JPEG header, then more bytes than any acceptable image
        f.write((s0 / "cell0002.jpg").read_bytes())
        f.truncate(CAP + 1)
    os.link(s0 / "cell0003.jpg", s1 / "zz_other_slide.jpg")

    run = _infer(batch, model_dir, tmp_path / "runs")
    reasons = dict(pl.read_parquet(run / SKIPPED_FILE).select("path", "reason").iter_rows())
    assert reasons["S00000/fifo.jpg"] == "not a regular file (FIFO)"
    assert reasons["S00000/inside_fifo.jpg"] == "not a regular file (FIFO)"
    assert reasons["S00000/outside_fifo.jpg"] == "not a regular file (FIFO)"
    assert reasons["S00000/zero.jpg"] == "not a regular file (character device)"
    assert reasons["S00000/urandom.png"] == "not a regular file (character device)"
    assert reasons["S00000/hard.jpg"] == "same file as S00000/cell0000.jpg"
    assert reasons["S00000/soft.jpg"] == "same file as S00000/cell0001.jpg"
    assert reasons["S00001/zz_other_slide.jpg"] == "same file as S00000/cell0003.jpg"
    assert "above the limit of" in reasons["S00000/big.jpg"] and "bytes per cell file" in reasons["S00000/big.jpg"]
    assert len(reasons) == 9
    counts = {r["sample_id"]: r for r in pl.read_parquet(run / COUNTS_FILE).iter_rows(named=True)}
    assert (counts["S00000"]["n_files"], counts["S00000"]["n_skipped"], counts["S00000"]["n_cells"]) == (14, 8, 6)
    assert (counts["S00001"]["n_files"], counts["S00001"]["n_skipped"], counts["S00001"]["n_cells"]) == (7, 1, 6)
    assert pl.read_parquet(run / PREDICTIONS_FILE).height == 12


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_link_to_a_device_is_never_opened(batch, target, no_hang):
    (batch / "S00000" / "dev.jpg").symlink_to(target)
    (entry,) = [c for c in read_slide_set(batch).samples[0].cells if c.rel_path.endswith("dev.jpg")]
    assert (entry.rejected, entry.openable) == ("not a regular file (character device)", False)
    meta, _ = decode_chunk((entry,), InputSpec(size=64), MAX_PIXELS)
    assert meta[0]["sha256"] is None and meta[0]["skip_reason"] == entry.rejected


def test_a_fifo_swapped_in_after_listing_does_not_block(batch, no_hang):
    cells = read_slide_set(batch).samples[0].images
    victim = cells[0].abs_path
    victim.unlink()
    os.mkfifo(victim)
    meta, pixels = decode_chunk(cells, InputSpec(size=64), MAX_PIXELS)
    assert meta[0]["skip_reason"] == "not a regular file (FIFO)"
    assert pixels is not None and len(pixels) == len(cells) - 1


def test_a_file_replaced_or_grown_after_listing_is_refused(batch, no_hang):
    cells = read_slide_set(batch).samples[0].images
    replacement = cells[0].abs_path.with_suffix(".new")
    replacement.write_bytes(cells[0].abs_path.read_bytes())
    os.replace(replacement, cells[0].abs_path)
    with open(cells[1].abs_path, "ab") as f:  # grows past the cap between listing and reading
        f.truncate(CAP + 10)
    meta, _ = decode_chunk(cells[:2], InputSpec(size=64), MAX_PIXELS)
    assert meta[0]["skip_reason"] == "file was replaced by another file after the batch was listed"
    assert "above the limit of" in meta[1]["skip_reason"]


def test_reading_stops_at_the_cap_even_when_the_size_says_otherwise():
    # /proc files are regular, report size 0 and hold more: the read loop itself must stop.
    path = Path("/proc/self/maps")
    if not path.exists():
        pytest.skip("no /proc")
    assert os.stat(path).st_size == 0
    with pytest.raises(CellRejected, match="more bytes than when listed"):
        read_cell_file(path, 16)


def test_non_regular_files_are_refused_by_the_reader(tmp_path, no_hang):
    os.mkfifo(tmp_path / "f")
    for path, kind in [(tmp_path / "f", "FIFO"), (Path("/dev/zero"), "character device"), (tmp_path, "folder")]:
        with pytest.raises(CellRejected, match=rf"^not a regular file \({kind}\)$"):
            read_cell_file(path, 1 << 20)


def test_cell_library_leaves_out_fifos_and_devices(tmp_path, pbc_cells, no_hang):
    lib = tmp_path / "lib" / "neutrophil"
    lib.mkdir(parents=True)
    (lib / "a.jpg").write_bytes(pbc_cells[0].path.read_bytes())
    os.mkfifo(lib / "b.jpg")
    (lib / "c.jpg").symlink_to("/dev/zero")
    assert [c.path.name for c in read_cell_library(tmp_path / "lib")] == ["a.jpg"]


def test_the_cap_follows_the_pixel_limit():
    assert max_file_bytes(4096 * 4096) == 4096 * 4096 * 8 + (1 << 20)
    assert max_file_bytes(100) < max_file_bytes(200)
