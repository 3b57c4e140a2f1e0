"""Issue 19, class 4: tamper evidence reaches every step.

`wbcv compare` and `wbcv report` verify each run they read, and the inference run a comparison was
made from, and refuse (exit 2, naming what changed) when anything differs from its sealed record.
`wbcv verify --inputs` re-hashes the batch's input files against the run's inputs.parquet.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import REPO, run_wbcv
from wbcv.base.errors import WbcvError
from wbcv.base.tables import COUNTS_FILE, INPUTS_FILE, PREDICTIONS_FILE
from wbcv.cli import EXIT_FAILED_ACCEPTANCE, EXIT_INPUT_ERROR, EXIT_OK, EXIT_TAMPERED
from wbcv.cli import main as wbcv_main
from wbcv.fixtures.phantom import PHANTOM_MODEL, write_phantom_library
from wbcv.fixtures.simulator import simulate_study
from wbcv.inference.input_check import verify_inputs
from wbcv.inference.library import read_cell_library
from wbcv.validation.report import load_report_data
from wbcv.validation.study import run_comparison

N_CELLS = 24


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tamper")
    library = write_phantom_library(root / "library", 10, seed=2)
    simulate_study(read_cell_library(library), root / "study", 4, N_CELLS, seed=4)
    protocol = (REPO / "fixtures" / "samples" / "protocol.yaml").read_text()
    (root / "protocol.yaml").write_text(protocol.replace("min_cells: 100", f"min_cells: {N_CELLS // 2}"))
    return root


@pytest.fixture
def runs(study: Path, tmp_path: Path) -> dict[str, Path]:
    """A private copy of the batch, its inference run and a comparison of it (all writable by the test)."""
    batch = tmp_path / "batch"
    shutil.copytree(study / "study", batch)
    out = tmp_path / "runs"
    assert wbcv_main(["infer", str(batch), "--model", PHANTOM_MODEL, "--out", str(out), "--no-progress"]) == EXIT_OK
    reference, protocol = str(batch / "XN_SAMPLE.csv"), str(study / "protocol.yaml")
    rc = wbcv_main(["compare", str(next(out.iterdir())), "--reference", reference, "--protocol", protocol])
    assert rc in (EXIT_OK, EXIT_FAILED_ACCEPTANCE)
    found = {("compare" if "-compare-" in p.name else "infer"): p for p in out.iterdir()}
    for run in found.values():
        for p in [run, *run.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    return {**found, "batch": batch, "reference": batch / "XN_SAMPLE.csv", "protocol": study / "protocol.yaml"}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def counts_rewritten(run: Path) -> str:
    """A plausible rewrite, not a broken file: one count changed through polars."""
    counts = pl.read_parquet(run / COUNTS_FILE)
    counts.with_columns(pl.col("n_cells") + 1).write_parquet(run / COUNTS_FILE)
    return f"changed: {COUNTS_FILE}"


def predictions_bit_flipped(run: Path) -> str:
    _flip_a_byte(run / PREDICTIONS_FILE)
    return f"changed: {PREDICTIONS_FILE}"


def table_deleted(run: Path) -> str:
    (run / INPUTS_FILE).unlink()
    return f"missing: {INPUTS_FILE}"


def file_added(run: Path) -> str:
    (run / "counts-corrected.parquet").write_bytes(b"PAR1")
    return "added: counts-corrected.parquet"


ALTERATIONS: list[Callable[[Path], str]] = [counts_rewritten, predictions_bit_flipped, table_deleted, file_added]


@pytest.mark.parametrize("alter", ALTERATIONS, ids=lambda f: f.__name__)
def test_compare_refuses_an_altered_inference_run(runs, alter, tmp_path):
    expected = alter(runs["infer"])
    with pytest.raises(WbcvError, match="altered after it was sealed") as refused:
        run_comparison(runs["infer"], runs["reference"], runs["protocol"], tmp_path / "new-runs")
    assert expected in str(refused.value) and "a comparison would validate counts" in str(refused.value)
    assert not (tmp_path / "new-runs").exists() or not any((tmp_path / "new-runs").iterdir())


@pytest.mark.parametrize("alter", ALTERATIONS, ids=lambda f: f.__name__)
def test_report_refuses_when_the_inference_run_behind_it_was_altered(runs, alter):
    load_report_data(runs["compare"])  # intact: reads
    kind, name = alter(runs["infer"]).split(": ")
    with pytest.raises(WbcvError, match=r"the inference run it was made from .* was altered") as refused:
        load_report_data(runs["compare"])
    assert f"{kind}: {runs['infer'] / name}" in str(refused.value) and "a report would certify" in str(refused.value)


def test_report_refuses_when_the_inference_run_record_was_rewritten(runs):
    record = runs["infer"] / "run.json"
    record.write_text(record.read_text().replace('"n_cells"', '"n_cells" ', 1))
    with pytest.raises(WbcvError, match="differs from the sha256 recorded at comparison"):
        load_report_data(runs["compare"])


def test_report_refuses_when_the_inference_run_is_gone(runs, tmp_path):
    shutil.move(runs["infer"], tmp_path / "archived")
    with pytest.raises(WbcvError, match=r"missing: .*the inference run this comparison used"):
        load_report_data(runs["compare"])


@pytest.mark.parametrize("alter", [counts_rewritten, file_added], ids=lambda f: f.__name__)
def test_report_refuses_an_altered_comparison(runs, alter):
    alter(runs["compare"]) if alter is file_added else _flip_a_byte(runs["compare"] / "comparison.parquet")
    with pytest.raises(WbcvError, match="the run was altered after it was sealed"):
        load_report_data(runs["compare"])


@pytest.mark.slow  # starts the command line
def test_the_command_line_exits_2_naming_the_file(runs, tmp_path):
    counts_rewritten(runs["infer"])
    compare = run_wbcv(
        "compare", str(runs["infer"]), "--reference", str(runs["reference"]), "--protocol", str(runs["protocol"]),
        "--out", str(tmp_path / "new"), timeout=120,
    )  # fmt: skip
    report = run_wbcv("report", str(runs["compare"]), timeout=120)
    for r in (compare, report):
        assert r.returncode == EXIT_INPUT_ERROR, r.stdout + r.stderr
        assert "changed: " in r.stderr and f"{COUNTS_FILE}" in r.stderr and "Traceback" not in r.stderr
    assert not (runs["compare"] / "report").exists()


# --- wbcv verify --inputs ----------------------------------------------------------------------


def _images(batch: Path) -> list[Path]:
    return sorted(p for p in batch.rglob("*.png") if p.is_file()) or sorted(batch.rglob("*.jpg"))


def image_retouched(batch: Path) -> tuple[str, str]:
    image = _images(batch)[3]
    _flip_a_byte(image)
    return "changed", image.relative_to(batch).as_posix()


def image_truncated(batch: Path) -> tuple[str, str]:
    image = _images(batch)[5]
    image.write_bytes(image.read_bytes()[:-10])
    return "changed", image.relative_to(batch).as_posix()


def image_deleted(batch: Path) -> tuple[str, str]:
    image = _images(batch)[0]
    image.unlink()
    return "missing", image.relative_to(batch).as_posix()


def image_added(batch: Path) -> tuple[str, str]:
    source = _images(batch)[1]
    extra = source.with_name("added-later" + source.suffix)
    shutil.copyfile(source, extra)
    return "added", extra.relative_to(batch).as_posix()


def image_replaced_by_a_fifo(batch: Path) -> tuple[str, str]:
    image = _images(batch)[2]
    image.unlink()
    os.mkfifo(image)  # opening it for reading would block forever without O_NONBLOCK
    return "unreadable", image.relative_to(batch).as_posix()


def manifest_edited(batch: Path) -> tuple[str, str]:
    manifest = batch / "manifest.csv"
    manifest.write_text(manifest.read_text() + "\n")
    return "changed", "manifest.csv"


INPUT_ALTERATIONS = [image_retouched, image_truncated, image_deleted, image_added, image_replaced_by_a_fifo]


def test_verify_inputs_finds_nothing_on_an_untouched_batch(runs):
    for run in (runs["infer"], runs["compare"]):
        v = verify_inputs(run)
        assert v.intact, v.findings
        assert v.inference_run == runs["infer"] and v.n_checked > 4 * N_CELLS // 2


@pytest.mark.parametrize("alter", [*INPUT_ALTERATIONS, manifest_edited], ids=lambda f: f.__name__)
def test_verify_inputs_names_each_changed_missing_or_added_file(runs, alter):
    kind, path = alter(runs["batch"])
    findings = {(f.kind, f.path) for f in verify_inputs(runs["compare"]).findings}
    assert (kind, path) in findings
    assert len(findings) == 1 or alter is manifest_edited, findings


@pytest.mark.slow  # starts the command line
def test_wbcv_verify_inputs_exits_4_and_does_not_hang_on_a_fifo(runs):
    clean = run_wbcv("verify", "--inputs", str(runs["infer"]), timeout=120)
    assert clean.returncode == EXIT_OK and "re-hashed" in clean.stdout, clean.stdout + clean.stderr
    named = [alter(runs["batch"]) for alter in INPUT_ALTERATIONS]
    r = run_wbcv("verify", "--inputs", str(runs["compare"]), timeout=60)
    assert r.returncode == EXIT_TAMPERED and "NOT INTACT" in r.stdout, r.stdout + r.stderr
    for kind, path in named:
        assert f"input {kind}: {path}" in r.stdout


def test_verify_inputs_is_not_trusted_when_the_run_record_is_altered(runs):
    counts_rewritten(runs["infer"])
    image_deleted(runs["batch"])
    code = wbcv_main(["verify", "--inputs", str(runs["infer"])])
    assert code == EXIT_TAMPERED
