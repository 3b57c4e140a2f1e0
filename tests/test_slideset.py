"""Batch-level checks: every problem with the batch as a whole stops it with one clear message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wbcv.base.errors import WbcvError
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.inference.slideset import read_slide_set


@pytest.fixture
def batch(tmp_path: Path, pbc_cells) -> Path:
    return build_slide_set(pbc_cells, tmp_path / "batch", n_samples=3, cells_per_slide=4, seed=1)


def _manifest(batch: Path, text: str, name: str = "manifest.csv") -> None:
    (batch / "manifest.csv").unlink()
    (batch / name).write_text(text)


def test_valid_batch_is_read_with_labels(batch):
    s = read_slide_set(batch)
    assert [x.sample_id for x in s.samples] == ["S00000", "S00001", "S00002"]
    assert all(len(x.images) == 4 for x in s.samples)
    assert len(s.cell_labels) == 12 and s.unlisted_dirs == ()


def test_yaml_manifest_with_per_sample_fields(batch):
    os.rename(batch / "S00001", batch / "slides_b")
    _manifest(
        batch,
        """
batch_id: B-7
samples:
  - {sample_id: S00000, imaged_volume_ul: 0.25, scanner: DM96, date: 2026-03-01}
  - {sample_id: S00001, slide_dir: slides_b}
  - {sample_id: S00002, calibration_factor: 0.031}
""",
        "manifest.yaml",
    )
    s = read_slide_set(batch)
    assert s.batch_id == "B-7"
    assert s.samples[0].fields == {"imaged_volume_ul": 0.25, "scanner": "DM96", "date": "2026-03-01"}
    assert s.samples[1].slide_dir == "slides_b" and len(s.samples[1].images) == 4


def _fails(batch: Path, *fragments: str) -> str:
    with pytest.raises(WbcvError) as e:
        read_slide_set(batch)
    for f in fragments:
        assert f in str(e.value), f"{f!r} not in:\n{e.value}"
    return str(e.value)


def test_missing_manifest(batch):
    (batch / "manifest.csv").unlink()
    _fails(batch, "no manifest; expected one of manifest.csv, manifest.yaml")


def test_unknown_column_gets_a_suggestion(batch):
    _manifest(batch, "sample_id,imaged_volume_uL\nS00000,0.5\n")
    _fails(batch, "manifest.csv: unknown column 'imaged_volume_uL' (did you mean 'imaged_volume_ul'?)")


def test_missing_sample_id_column(batch):
    _manifest(batch, "slide_dir\nS00000\n")
    _fails(batch, "required column 'sample_id' is missing")


def test_unknown_yaml_field_and_top_level_key(batch):
    _manifest(batch, "samples:\n  - {sample_id: S00000, scaner: x}\n", "manifest.yaml")
    _fails(batch, "samples[0] has unknown field 'scaner' (did you mean 'scanner'?)")
    (batch / "manifest.yaml").write_text("sample:\n  - {sample_id: S00000}\n")
    _fails(batch, "unknown key 'sample' (did you mean 'samples'?)")


def test_duplicate_sample_ids_name_both_rows(batch):
    _manifest(batch, "sample_id\nS00000\nS00001\nS00000\n")
    _fails(batch, "manifest.csv row 4: duplicate sample_id 'S00000' (first at manifest.csv row 2)")


def test_bad_field_values(batch):
    _manifest(batch, "sample_id,imaged_volume_ul,date\nS00000,-1,2026-01-01\nS00001,0.2,01/02/2026\n,,\n")
    msg = _fails(
        batch,
        "row 2: field 'imaged_volume_ul' is '-1'; expected a positive number",
        "row 3: field 'date' is '01/02/2026'; expected YYYY-MM-DD",
    )
    assert "3 problems" not in msg  # the blank line is layout, not a sample


def test_empty_slide_folder(batch):
    for f in (batch / "S00001").iterdir():
        f.unlink()
    _fails(batch, "S00001 has no cell images; expected at least one .jpg, .jpeg, .png, .bmp, .tif, .tiff file")


def test_folder_holding_only_non_images_is_empty_too(batch):
    for f in (batch / "S00001").iterdir():
        f.unlink()
    (batch / "S00001" / "notes.txt").write_text("x")
    _fails(batch, "has no cell images (1 other file(s))")


def test_missing_slide_folder(batch):
    _manifest(batch, "sample_id\nS00000\nS00009\n")
    _fails(batch, "row 3: slide folder", "S00009 does not exist")


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ("../elsewhere", "contains '..'"),
        ("/etc", "is an absolute path"),
        ("C:/slides", "is an absolute path"),
    ],
)
def test_slide_dir_must_stay_inside_the_batch(batch, bad, fragment):
    _manifest(batch, f"sample_id,slide_dir\nS00000,{bad}\n")
    _fails(batch, f"slide_dir {bad!r} {fragment}")


def test_symlinked_slide_dir_leading_outside_is_refused(batch, tmp_path):
    outside = tmp_path / "outside"
    os.rename(batch / "S00002", outside)
    (batch / "S00002").symlink_to(outside, target_is_directory=True)
    _fails(batch, "slide_dir 'S00002' leads outside the batch", "through a symbolic link")


def test_unreadable_slide_folder(batch, monkeypatch):
    real_scandir = os.scandir
    target = (batch / "S00001").as_posix()

    def scandir(path="."):
        if Path(path).as_posix() == target:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    # Tests run as root in CI, where chmod 000 cannot make a folder unreadable: inject the error.
    monkeypatch.setattr(os, "scandir", scandir)
    _fails(batch, "cannot read slide folder", "S00001: Permission denied")


def test_every_problem_is_listed_at_once(batch):
    _manifest(batch, "sample_id,slide_dir\nS00000,../x\nS00000,\nS00007,\n")
    msg = _fails(batch, "3 problems", "contains '..'", "duplicate sample_id", "S00007 does not exist")
    assert msg.count("\n  - ") == 3


def test_files_that_cannot_be_cells_are_kept_as_rejected_entries(batch, tmp_path):
    (batch / "S00000" / "readme.txt").write_text("hello")
    (batch / "S00000" / "nested").mkdir()
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((batch / "S00001" / "cell0000.jpg").read_bytes())
    (batch / "S00000" / "link.jpg").symlink_to(outside)
    sample = read_slide_set(batch).samples[0]
    rejected = {Path(c.rel_path).name: c.rejected for c in sample.cells if c.rejected}
    assert "not a cell image file (extension '.txt'" in rejected["readme.txt"]
    assert "sub-folder" in rejected["nested"]
    assert "symbolic link leading outside" in rejected["link.jpg"]
    assert len(sample.images) == 4


def test_folders_not_in_the_manifest_are_reported(batch):
    _manifest(batch, "sample_id\nS00000\nS00001\n")
    (batch / "cell_labels.csv").unlink()
    assert read_slide_set(batch).unlisted_dirs == ("S00002",)


def test_cell_labels_must_match_the_slides(batch):
    (batch / "cell_labels.csv").write_text("sample_id,file,label\nS00000,nope.jpg,basophil\nS00099,a.jpg,x\n")
    _fails(
        batch,
        "cell_labels.csv row 2: file 'nope.jpg' is not in slide folder 'S00000'",
        "row 3: sample_id 'S00099' is not in the manifest",
    )


def test_manifest_that_is_not_utf8(batch):
    (batch / "manifest.csv").write_bytes("sample_id\nS\xe9\n".encode("latin-1"))
    _fails(batch, "manifest.csv: not UTF-8 text")


def test_batch_dir_that_is_missing_or_a_file(tmp_path):
    with pytest.raises(WbcvError, match="batch directory does not exist"):
        read_slide_set(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(WbcvError, match="not a directory"):
        read_slide_set(tmp_path / "f")
