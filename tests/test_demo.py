"""`make demo`'s computation, small: builds a slide set from real cells and classifies it."""

from __future__ import annotations

from fixtures.demo import main
from tests.conftest import PBC_DIR


def test_demo_runs_end_to_end_on_real_cells(tmp_path, capsys):
    rc = main(["--cells", str(PBC_DIR), "--out", str(tmp_path / "demo"), "--samples", "2", "--cells-per-slide", "5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "10 cells classified in 2 samples" in out
    assert "predicted/true cells per class" in out and "S00001" in out
    runs = [p for p in (tmp_path / "demo" / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1 and (runs[0] / "counts.parquet").is_file()
