"""`make demo`'s computation, small: simulate a study from real cells and run the whole validation."""

from __future__ import annotations

from fixtures.demo import main
from tests.conftest import PBC_DIR


def test_demo_runs_the_whole_validation(tmp_path, capsys):
    rc = main(["--cells", str(PBC_DIR), "--out", str(tmp_path / "demo"), "--samples", "8", "--cells-per-slide", "40"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OVERALL:" in out and "demo: finished" in out
    runs = [p for p in (tmp_path / "demo" / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 2 and any("-compare-" in p.name for p in runs)


def test_demo_without_a_library_says_how_to_give_one(tmp_path, capsys):
    assert main(["--cells", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    assert "make demo CELLS=" in capsys.readouterr().err


def test_demo_without_cells_uses_phantoms_and_the_phantom_model(tmp_path, capsys):
    rc = main(
        ["--out", str(tmp_path / "demo"), "--samples", "6", "--cells-per-slide", "120", "--phantoms-per-class", "20"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "phantom cells drawn" in out and "model phantom-res2net-tiny@" in out and "OVERALL:" in out
