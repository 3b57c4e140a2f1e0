"""`make demo`'s computation, small: simulate a study from real cells and run the whole validation."""

from __future__ import annotations

from tests.conftest import PBC_DIR
from wbcv.fixtures.demo import main


def test_demo_runs_the_whole_validation(tmp_path, capsys):
    demo = tmp_path / "demo"
    args = ["--cells", str(PBC_DIR), "--out", str(demo), "--samples", "8", "--cells-per-slide", "40", "--no-serve"]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OVERALL:" in out and "demo: computation finished" in out
    runs = [p for p in (demo / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 2
    compare = next(p for p in runs if "-compare-" in p.name)
    assert f"PDF: {compare / 'report' / 'report.pdf'}" in out and (compare / "report" / "report.html").is_file()


def test_demo_without_a_library_says_how_to_give_one(tmp_path, capsys):
    assert main(["--cells", str(tmp_path / "missing"), "--out", str(tmp_path / "d")]) == 2
    assert "make demo CELLS=" in capsys.readouterr().err


def test_demo_without_cells_uses_phantoms_and_the_phantom_model(tmp_path, capsys):
    args = ["--out", str(tmp_path / "demo"), "--samples", "6", "--cells-per-slide", "120", "--phantoms-per-class", "20"]
    rc = main([*args, "--no-serve"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "phantom cells drawn" in out and "model phantom-res2net-tiny@" in out and "OVERALL:" in out
