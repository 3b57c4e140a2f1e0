"""Shared fixtures: the real PBC cell library (../shared/data/pbc), the second-lab Tecom crops with
expert masks (../shared/data/tecom) and small model artifacts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wbcv.inference.artifact import InputSpec, make_card, save_artifact
from wbcv.inference.ensemble import WbcEnsembleNet
from wbcv.inference.library import LabelledCell, read_cell_library
from wbcv.inference.res2net import variant

REPO = Path(__file__).resolve().parent.parent
PBC_DIR = Path(os.environ.get("WBCV_PBC_DIR", REPO.parent / "shared" / "data" / "pbc"))
TECOM_DIR = Path(os.environ.get("WBCV_TECOM_DIR", REPO.parent / "shared" / "data" / "tecom"))

#: Test modules that are heavy as a whole (a real Chromium, a Ray cluster, training, the PDF
#: print, the demo): marked `slow`, so `pytest -m "not slow"` is the quick loop. Single heavy tests
#: elsewhere (kill-and-resume, end to end on real cells) carry the mark themselves.
SLOW_MODULES = frozenset(
    {
        "test_dashboard_browser",
        "test_dashboard_security",
        "test_ray_engine",
        "test_training",
        "test_report",
        "test_demo",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def pbc_cells() -> list[LabelledCell]:
    if not (PBC_DIR / "manifest.csv").is_file():
        pytest.fail(f"the PBC cell library is expected at {PBC_DIR} (set WBCV_PBC_DIR to override)")
    return read_cell_library(PBC_DIR)


@pytest.fixture(scope="session")
def tecom_dir() -> Path:
    """The Tecom second-lab set: only read (evaluated against), never used to fit anything."""
    if not (TECOM_DIR / "manifest.csv").is_file():
        pytest.fail(f"the Tecom set is expected at {TECOM_DIR} (set WBCV_TECOM_DIR to override)")
    return TECOM_DIR


def write_test_artifact(
    out_dir: Path, seed: int = 0, norm: str = "batch", name: str = "test-untrained", spec: InputSpec | None = None
) -> Path:
    """A small, randomly initialised artifact in the real format (the trained model is its own issue).

    BatchNorm running statistics are perturbed so that folding them is a real transformation.
    """
    torch.manual_seed(seed)
    cfg = dataclasses.replace(variant("res2net_wbc_tiny"), norm=norm)  # type: ignore[arg-type]
    spec = spec or InputSpec(size=64)
    net = WbcEnsembleNet(cfg, spec.mean, spec.std)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    # Larger head weights spread the untrained outputs, so some cells are classified and some not.
    for head in (net.ova_head, net.lineage_head):
        torch.nn.init.normal_(head.weight, std=3.0)
    save_artifact(net, make_card(name, cfg, spec), out_dir)
    return out_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_artifact(tmp_path_factory.mktemp("model") / "test-untrained")


def run_wbcv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it: a fresh process, output captured."""
    return subprocess.run([sys.executable, "-m", "wbcv.cli", *args], capture_output=True, text=True, timeout=timeout)
