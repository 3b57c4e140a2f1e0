"""Labelled cell libraries: the input of training, evaluation and the study simulator.

Two layouts are accepted:

* a ``manifest.csv`` with at least the columns ``path`` (relative to the library folder) and
  ``label`` (like ``../shared/data/pbc/manifest.csv``; an ``sha256`` column is used when present);
* otherwise one sub-folder per label, holding that label's images (files named like
  ``decode.IMAGE_EXTENSIONS``: JPEG, PNG, BMP or TIFF; each is decoded by content as ``wbcv infer``
  decodes cells, and a file that cannot be decoded is reported with its reason).

Only regular files are cells (``is_file`` stats the target of a link: FIFOs, devices and links to
them are left out), and their bytes are read through ``decode.read_cell_file``, which opens
without blocking, checks ``fstat`` again and caps the bytes read.

Labels are kept as written (lower-cased); labels outside ``CELL_CLASSES`` (platelet, erythroblast,
ig, smudge ...) are legitimate: they are the out-of-scope cells an evaluation must see rejected.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wbcv.base.errors import WbcvError
from wbcv.inference.decode import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class LabelledCell:
    path: Path
    label: str
    sha256: str | None = None


def read_cell_library(cells_dir: Path | str) -> list[LabelledCell]:
    """All labelled cells of a library, sorted by path (a stable order for seeded sampling)."""
    root = Path(cells_dir)
    if not root.is_dir():
        raise WbcvError(f"{root}: cell library folder does not exist")
    manifest = root / "manifest.csv"
    cells = _from_manifest(root, manifest) if manifest.is_file() else _from_folders(root)
    if not cells:
        raise WbcvError(
            f"{root}: no labelled cells found; expected manifest.csv with path,label columns or one "
            f"sub-folder of {', '.join(IMAGE_EXTENSIONS)} images per label"
        )
    return sorted(cells, key=lambda c: c.path.as_posix())


def _from_manifest(root: Path, manifest: Path) -> list[LabelledCell]:
    try:
        text = manifest.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise WbcvError(f"{manifest}: cannot read as UTF-8 text: {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"path", "label"} - set(reader.fieldnames or [])
    if missing:
        raise WbcvError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}; expected path,label")
    cells: list[LabelledCell] = []
    for lineno, row in enumerate(reader, start=2):
        rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip().lower()
        if not rel or not label:
            raise WbcvError(f"{manifest} row {lineno}: empty path or label")
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            raise WbcvError(f"{manifest} row {lineno}: path {rel!r} must be relative and inside {root}")
        path = root.joinpath(*pure.parts)
        if not path.is_file():  # stat follows links: a FIFO, a device or a link to one is not a file
            raise WbcvError(f"{manifest} row {lineno}: file {rel!r} does not exist")
        cells.append(LabelledCell(path, label, (row.get("sha256") or None)))
    return cells


def _from_folders(root: Path) -> list[LabelledCell]:
    cells: list[LabelledCell] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                cells.append(LabelledCell(f, folder.name.lower()))
    return cells
