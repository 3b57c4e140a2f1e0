"""Run records with known content for the dashboard tests, and a dashboard server in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import REPO, write_test_artifact
from wbcv.cli import EXIT_FAILED_ACCEPTANCE, EXIT_OK
from wbcv.cli import main as wbcv_main
from wbcv.dashboards.auth import Credentials
from wbcv.dashboards.server import make_dashboard_server
from wbcv.fixtures.phantom import PHANTOM_MODEL, write_phantom_library
from wbcv.fixtures.simulator import simulate_study
from wbcv.inference.library import read_cell_library

PROTOCOL_TEXT = (REPO / "fixtures" / "samples" / "protocol.yaml").read_text()


def make_study_runs(out: Path, n_samples: int, cells_per_slide: int, untrained_model: bool = True) -> Path:
    """Simulate a phantom study and validate it: returns the runs folder.

    Comparison runs made, oldest first: with ``untrained_model``, a randomly initialised model that
    leaves every cell unclassified (a run with nothing to compare); the phantom model under a
    ±15 % protocol; the same inference run under the sample protocol (±10 %, min_cells lowered to
    fit the small slides), the newest, which the page shows first. The first slides hold a few
    non-cells, so the phantom runs have some unclassified cells too.
    """
    library = write_phantom_library(out / "library", 12, seed=1)
    study = out / "study"
    simulate_study(read_cell_library(library), study, n_samples, cells_per_slide, seed=3)
    add_non_cells(study, n_slides=3)
    p10 = out / "protocol-10.yaml"
    p10.write_text(PROTOCOL_TEXT.replace("min_cells: 100", f"min_cells: {cells_per_slide // 2}"))
    p15 = out / "protocol-15.yaml"
    p15.write_text(
        p10.read_text().replace("allowable_error_pct: 10", "allowable_error_pct: 15").replace('"1.0"', '"1.5"')
    )
    runs = out / "runs"
    common = ["--reference", str(study / "XN_SAMPLE.csv"), "--out", str(runs), "--no-progress"]
    if untrained_model:
        model = write_test_artifact(out / "untrained-model")
        rc = wbcv_main(["run", str(study), "--protocol", str(p10), "--model", str(model), *common])
        assert rc in (EXIT_OK, EXIT_FAILED_ACCEPTANCE)
    before = set(runs.iterdir()) if runs.exists() else set()
    rc = wbcv_main(["run", str(study), "--protocol", str(p15), "--model", PHANTOM_MODEL, *common])
    assert rc in (EXIT_OK, EXIT_FAILED_ACCEPTANCE)
    inference_run = next(p for p in set(runs.iterdir()) - before if "-compare-" not in p.name)
    time.sleep(1.1)  # run ids and creation times have whole seconds: keep the order unambiguous
    rc = wbcv_main(["compare", str(inference_run), "--reference", str(study / "XN_SAMPLE.csv"), "--protocol", str(p10)])
    assert rc in (EXIT_OK, EXIT_FAILED_ACCEPTANCE)
    return runs


def add_non_cells(study: Path, n_slides: int) -> None:
    """Noise and blank tiles (no expert label) in the first slides: things the model should not name,
    so the gallery has unclassified cells to mark."""
    rng = np.random.default_rng(7)
    for slide in sorted(p for p in study.iterdir() if p.is_dir())[:n_slides]:
        for i in range(6):
            if i % 2:
                tile = np.full((64, 64, 3), 190 + 10 * i, np.uint8)
            else:
                tile = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(tile).save(slide / f"zz_noise{i}.jpg")


@contextmanager
def serving(runs: Path, credentials: Credentials | None = None) -> Iterator[str]:
    """The dashboard on a free loopback port in a background thread; yields its base URL."""
    server = make_dashboard_server(runs, "127.0.0.1", 0, credentials)
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
