"""Only `wbcv` is an installed top-level import name, in a wheel and in an editable install.

PyPI has unrelated packages called `inference`, `validation` and `fixtures`; installing wbcv beside
them must break neither. The layers keep their top-level folders and install as `wbcv.inference`,
`wbcv.validation`, `wbcv.dashboards` and `wbcv.fixtures`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("inference", "validation", "dashboards", "fixtures")
PROBE = """
import importlib, json, sys
found = {}
for name in ("inference", "validation", "dashboards", "fixtures"):
    try:
        importlib.import_module(name)
        found[name] = "importable"
    except ImportError:
        found[name] = "missing"
import wbcv.inference.decode, wbcv.validation.report, wbcv.dashboards.data, wbcv.fixtures.simulator, wbcv.base.runstore
found["wbcv.inference"] = wbcv.inference.__file__
print(json.dumps(found))
"""


def _env_without_source_tree() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _probe(cwd: Path, extra_path: Path | None = None) -> dict[str, str]:
    env = _env_without_source_tree()
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_editable_install_imports_the_layers_under_wbcv_only(tmp_path):
    found = _probe(tmp_path)  # outside the repository: only what is installed counts
    assert {name: found[name] for name in LAYERS} == dict.fromkeys(LAYERS, "missing")
    assert Path(found["wbcv.inference"]).parent.name == "inference"


@pytest.mark.slow
def test_wheel_holds_only_wbcv_and_its_data_files(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), REPO],
        check=True,
        capture_output=True,
        timeout=300,
        env=_env_without_source_tree(),
    )
    (wheel,) = tmp_path.glob("wbcv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/", 1)[0] for n in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"wbcv"}
    for data_file in (
        "wbcv/validation/templates/report.html.j2",
        "wbcv/dashboards/assets/plotly-wbcv.min.js",
        "wbcv/fixtures/samples/protocol.yaml",
        "wbcv/fixtures/samples/results/oru.hl7",
        "wbcv/validation/results/hl7_oru.py",
        "wbcv/base/runstore.py",
        "wbcv/inference/runner.py",
    ):
        assert data_file in names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
        env=_env_without_source_tree(),
    )
    found = _probe(tmp_path, extra_path=target)
    assert {name: found[name] for name in LAYERS} == dict.fromkeys(LAYERS, "missing")
    assert Path(found["wbcv.inference"]).is_relative_to(target / "wbcv" / "inference")


def test_the_comparison_report_and_dashboard_read_runs_without_torch(tmp_path):
    """The base layer imports nothing of ours and no torch; validation and dashboards read runs
    through it (Parquet contract and run records), so `wbcv compare` never pays torch's import."""
    code = (
        "import sys, wbcv.base.runstore, wbcv.base.tables, wbcv.validation.study, wbcv.validation.report, "
        "wbcv.validation.results.run, wbcv.dashboards.data; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('wbcv.inference')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
