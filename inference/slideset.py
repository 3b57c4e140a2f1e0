"""Reading a batch of slide sets from disk and checking it before any cell is classified.

Layout (the contract a QA engineer prepares)::

    BATCH/
      manifest.csv | manifest.yaml   which samples belong to the batch (required)
      cell_labels.csv                optional expert labels: sample_id,file,label
      <slide_dir>/                   one folder per sample (default name: the sample id)
        *.jpg | *.jpeg | *.png       one image per cell (``decode.IMAGE_EXTENSIONS``; the format is
        *.bmp | *.tif | *.tiff       then told by content, ``decode.ACCEPTED_FORMATS``)

Manifest fields (CSV header or YAML keys of each entry under ``samples:``):

=====================  ========  ==============================================================
field                  required  meaning
=====================  ========  ==============================================================
sample_id              yes       must match the reference analyzer's ``Sample No.``
slide_dir              no        folder of this sample's cells, relative to BATCH; default sample_id
imaged_volume_ul       no        blood volume imaged on the slide (µL), for the volumetric count
calibration_factor     no        WBC (10^3/µL) per cell found, the volumetric alternative
um_per_px              no        the scanner's pixel size (µm per pixel, at most 5): cell sizes in µm,
                                 and objects of a size no white cell has are left unclassified
field_area_um2         no        smear fields (``wbcv segment``): one field's area in µm², when um_per_px
                                 is not given (um_per_px wins when both are)
smear_thickness_um     no        smear fields: the smear's blood volume per area, as an effective
                                 thickness in µm (imaged blood volume = analysed area x thickness);
                                 with the area it gives RBC and PLT concentrations. It depends on the
                                 spreading technique, the region of the smear scanned and the
                                 haematocrit: calibrate it per laboratory against the analyzer's RBC
scanner                no        scanner id or model
date                   no        acquisition date, ISO 8601 (YYYY-MM-DD)
notes                  no        free text
stratum                no        the case-mix stratum the sample was chosen for (``plan.strata`` of the
                                 protocol, e.g. normal, abnormal, leukopenic); the report counts the
                                 samples compared per stratum against the plan
=====================  ========  ==============================================================

A YAML manifest may also carry ``batch_id`` and ``description`` at the top level. It is read by
``wbcv.base.yamlfile`` (size and alias-expansion caps, duplicate keys refused, YAML 1.2 scalars),
and every text field (``sample_id``, ``slide_dir``, ``scanner``, ``date``, ``notes``, ``stratum``, ``batch_id``,
``description``) is the text as written: ``sample_id: 010`` is the id ``'010'`` (YAML 1.1 would make
it the number 8), ``001`` stays ``'001'``, ``1e3``, ``yes`` and ``0x1F`` stay as written. A list or
mapping in a text field is an error. In a CSV manifest every value is text already; ids keep their
leading zeros there too. Numbers (``imaged_volume_ul``, ``calibration_factor``, ``um_per_px``) must be plain
decimals (``0.25``, ``2.5e-4``); ``true``, ``0x1F`` or ``1_000`` are errors.

Everything wrong with the batch as a whole (missing or malformed manifest, unknown fields,
duplicate sample ids, a slide folder that is missing, empty, unreadable or outside BATCH) is
collected and raised as one ``WbcvError`` listing every problem. Files inside a slide folder that
cannot be cells (other extensions, sub-folders, links leading outside BATCH, anything that is not
a regular file: FIFOs, devices, sockets, links to them) are kept as rejected entries so that the
run records them, and folders no sample claims are listed too. Their type is told by ``stat`` alone:
listing opens nothing. Two entries that are the same file (a hard link, a link to another cell;
same st_dev and st_ino) are one cell: the plain file counts, the other name is rejected as
"same file as S001/cell0003.jpg". Reading happens later, through ``decode.read_cell_file``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from wbcv.base.errors import WbcvError, listing, shown, suggest
from wbcv.base.yamlfile import read_yaml
from wbcv.inference.decode import IMAGE_EXTENSIONS, not_regular_reason

MANIFEST_NAMES: Final[tuple[str, ...]] = ("manifest.csv", "manifest.yaml", "manifest.yml")
CELL_LABELS_NAME: Final[str] = "cell_labels.csv"
CELL_LABEL_COLUMNS: Final[tuple[str, ...]] = ("sample_id", "file", "label")
TOP_LEVEL_KEYS: Final[tuple[str, ...]] = ("batch_id", "description", "samples")
REQUIRED_FIELDS: Final[tuple[str, ...]] = ("sample_id",)
OPTIONAL_FIELDS: Final[tuple[str, ...]] = (
    "slide_dir",
    "imaged_volume_ul",
    "calibration_factor",
    "um_per_px",
    "field_area_um2",
    "smear_thickness_um",
    "scanner",
    "date",
    "notes",
    "stratum",
)
MANIFEST_FIELDS: Final[tuple[str, ...]] = REQUIRED_FIELDS + OPTIONAL_FIELDS
POSITIVE_NUMBER_FIELDS: Final[tuple[str, ...]] = (
    "imaged_volume_ul",
    "calibration_factor",
    "um_per_px",
    "field_area_um2",
    "smear_thickness_um",
)
#: The largest pixel size accepted (µm): a coarser pixel could not image a white cell (7-20 µm) at all.
MAX_UM_PER_PX: Final[float] = 5.0
#: Fields that are text as written (never numbers, booleans or dates), in both manifest formats.
TEXT_FIELDS: Final[tuple[str, ...]] = (
    "sample_id",
    "slide_dir",
    "scanner",
    "date",
    "notes",
    "stratum",
    "batch_id",
    "description",
)
_DECIMAL: Final[re.Pattern[str]] = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


@dataclass(frozen=True)
class CellEntry:
    """One file in a slide folder. ``rejected`` is set when it cannot be a cell at all."""

    rel_path: str  # POSIX path relative to BATCH: what every table and report shows
    abs_path: Path
    size: int
    mtime_ns: int
    rejected: str | None = None
    dev: int = 0  # st_dev and st_ino of the file as listed: reading checks it is still that file
    ino: int = 0
    openable: bool = True  # False: never opened (not a regular file, a link outside BATCH, a duplicate)


@dataclass(frozen=True)
class Sample:
    sample_id: str
    slide_dir: str
    where: str  # "manifest.csv row 4": where this sample was declared, for messages
    fields: dict[str, Any]
    cells: tuple[CellEntry, ...]

    @property
    def images(self) -> tuple[CellEntry, ...]:
        return tuple(c for c in self.cells if c.rejected is None)


@dataclass(frozen=True)
class SlideSet:
    root: Path
    manifest_path: Path
    batch_id: str | None
    samples: tuple[Sample, ...]
    unlisted_dirs: tuple[str, ...]  # folders in BATCH that no sample claims
    cell_labels: dict[tuple[str, str], str] = field(default_factory=dict)  # (sample_id, file) -> label
    cell_labels_path: Path | None = None

    @property
    def n_files(self) -> int:
        return sum(len(s.cells) for s in self.samples)

    def fingerprint(self) -> str:
        """sha256 of the manifest, labels and every file's path, size and mtime.

        Cheap (no file is read) and changes whenever a cell is added, removed or rewritten; used
        to recognise an interrupted run of the same batch. Content hashes of every cell are
        computed during inference and recorded in the run.
        """
        h = hashlib.sha256()
        h.update(self.manifest_path.read_bytes())
        if self.cell_labels_path is not None:
            h.update(self.cell_labels_path.read_bytes())
        for s in self.samples:
            h.update(f"\0sample\0{s.sample_id}\0{s.slide_dir}\n".encode())
            for c in s.cells:
                h.update(f"{c.rel_path}\0{c.size}\0{c.mtime_ns}\0{c.rejected}\n".encode())
        return h.hexdigest()


def _find_manifest(root: Path) -> Path:
    found = [root / n for n in MANIFEST_NAMES if (root / n).is_file()]
    if not found:
        raise WbcvError(
            f"{root}: no manifest; expected one of {', '.join(MANIFEST_NAMES)} listing the batch's "
            "sample ids (see `wbcv infer --help` for the fields)"
        )
    if len(found) > 1:
        raise WbcvError(f"{root}: several manifests ({', '.join(p.name for p in found)}); keep exactly one")
    return found[0]


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise WbcvError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise WbcvError(f"{path}: cannot read: {e.strerror}") from None


def _csv_rows(path: Path) -> list[list[str]]:
    reader = csv.reader(io.StringIO(_read_text(path)))
    try:
        return list(reader)
    except csv.Error as e:  # a field above csv's size limit, an unterminated quote ...
        raise WbcvError(f"{path} line {reader.line_num}: not readable as CSV: {e}") from None


def _manifest_rows_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = _csv_rows(path)
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise WbcvError(f"{path}: empty manifest; expected a header row with at least 'sample_id'")
    header = [h.strip() for h in rows[0]]
    problems = [
        f"{path}: unknown column {shown(h)}{suggest(h, MANIFEST_FIELDS)}; valid columns are "
        f"{', '.join(MANIFEST_FIELDS)}"
        for h in header
        if h not in MANIFEST_FIELDS
    ]
    problems += [f"{path}: required column {r!r} is missing" for r in REQUIRED_FIELDS if r not in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    problems += [f"{path}: column {shown(h)} appears more than once" for h in dupes]
    if problems:
        raise WbcvError("\n".join(listing(problems)))
    out: list[tuple[str, dict[str, Any]]] = []
    for lineno, r in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in r):
            continue  # blank lines are layout, not samples
        if len(r) != len(header):
            raise WbcvError(f"{path} row {lineno}: {len(r)} values but the header has {len(header)} columns")
        out.append((f"{path.name} row {lineno}", {h: (v.strip() or None) for h, v in zip(header, r, strict=True)}))
    return out


def _manifest_rows_yaml(path: Path) -> tuple[str | None, list[tuple[str, dict[str, Any]]]]:
    doc = read_yaml(path, "manifest", text_keys=TEXT_FIELDS)
    if not isinstance(doc, dict):
        raise WbcvError(f"{path}: expected a mapping with a 'samples' list at the top level")
    unknown = [k for k in doc if k not in TOP_LEVEL_KEYS]
    top_problems = [
        f"{path}: unknown key {shown(k)}{suggest(str(k), TOP_LEVEL_KEYS)}; valid top-level keys are "
        f"{', '.join(TOP_LEVEL_KEYS)}"
        for k in unknown
    ]
    top_problems += [
        f"{path}: key {k!r} must be text, got a {type(doc[k]).__name__} {shown(doc[k])}"
        for k in ("batch_id", "description")
        if doc.get(k) is not None and not isinstance(doc[k], str)
    ]
    if top_problems:
        raise WbcvError("\n".join(listing(top_problems)))
    samples = doc.get("samples")
    if not isinstance(samples, list) or not samples:
        raise WbcvError(f"{path}: key 'samples' must be a non-empty list of sample entries")
    out: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    for i, entry in enumerate(samples):
        where = f"{path.name} samples[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{path}: samples[{i}] must be a mapping with at least 'sample_id'")
            continue
        for k in entry:
            if k not in MANIFEST_FIELDS:
                problems.append(
                    f"{path}: samples[{i}] has unknown field {shown(k)}{suggest(str(k), MANIFEST_FIELDS)}; "
                    f"valid fields are {', '.join(MANIFEST_FIELDS)}"
                )
        out.append((where, dict(entry)))
    if problems:
        raise WbcvError("\n".join(listing(problems)))
    batch_id = doc.get("batch_id")
    return batch_id, out


def _check_fields(manifest: Path, where: str, raw: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    fields: dict[str, Any] = {}
    here = manifest.parent / where
    bad_text = [k for k in TEXT_FIELDS if raw.get(k) is not None and not isinstance(raw[k], str)]
    for k in bad_text:
        problems.append(
            f"{here}: field {k!r} must be text, got a {type(raw[k]).__name__} {shown(raw[k])}"
            + ("; quote it" if not isinstance(raw[k], list | dict) else "")
        )
    if "sample_id" in bad_text:
        return None
    sid = raw.get("sample_id")
    if sid is None or sid.strip() == "":
        problems.append(f"{here}: field 'sample_id' is missing or empty")
        return None
    fields["sample_id"] = sid.strip()
    for key in POSITIVE_NUMBER_FIELDS:
        v = raw.get(key)
        if v is None:
            continue
        number_text = v.strip() if isinstance(v, str) else None
        if isinstance(v, bool) or not (isinstance(v, int | float) or (number_text and _DECIMAL.fullmatch(number_text))):
            problems.append(f"{here}: field {key!r} is {shown(v)}; expected a positive number written in decimal")
            continue
        x = float(v)
        if not x > 0 or x != x or x == float("inf"):
            problems.append(f"{here}: field {key!r} is {shown(v)}; expected a positive number")
            continue
        fields[key] = x
    if fields.get("um_per_px", 0) > MAX_UM_PER_PX:
        problems.append(
            f"{here}: sample {shown(fields['sample_id'])}: field 'um_per_px' is {fields.pop('um_per_px')}; "
            f"expected the scanner's pixel size in micrometres, at most {MAX_UM_PER_PX} (typically 0.1-0.5)"
        )
    d = raw.get("date")
    if isinstance(d, str):
        try:
            fields["date"] = dt.date.fromisoformat(d.strip()).isoformat()
        except ValueError:
            problems.append(f"{here}: field 'date' is {shown(d)}; expected YYYY-MM-DD")
    for key in ("slide_dir", "scanner", "notes", "stratum"):
        if isinstance(raw.get(key), str):
            fields[key] = raw[key].strip()
    if "imaged_volume_ul" in fields and "calibration_factor" in fields:
        problems.append(f"{manifest.parent / where}: give either 'imaged_volume_ul' or 'calibration_factor', not both")
    return fields


def _safe_slide_dir(root: Path, rel: str, where: str, problems: list[str]) -> Path | None:
    """Resolve a manifest's slide_dir, refusing anything that leads outside the batch."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        problems.append(f"{where}: slide_dir {shown(rel)} is an absolute path; expected a folder inside {root}")
        return None
    if ".." in pure.parts:
        problems.append(f"{where}: slide_dir {shown(rel)} contains '..'; expected a folder inside {root}")
        return None
    candidate = root.joinpath(*pure.parts)
    try:
        resolved = candidate.resolve()
    except OSError as e:  # a name too long for the file system, a loop of links
        problems.append(f"{where}: slide_dir {shown(rel)} cannot be used as a folder name: {e.strerror}")
        return None
    if not resolved.is_relative_to(root.resolve()):
        problems.append(
            f"{where}: slide_dir {shown(rel)} leads outside the batch (to {resolved}, through a symbolic link); "
            f"expected a folder inside {root}"
        )
        return None
    return candidate


def _list_slide(
    root: Path, slide: Path, where: str, problems: list[str], seen: dict[tuple[int, int], str]
) -> tuple[CellEntry, ...]:
    root_resolved = root.resolve()
    try:
        exists = slide.exists()
    except OSError as e:  # a name too long for the file system
        rel = slide.relative_to(root).as_posix()
        problems.append(f"{where}: slide folder {shown(rel)} cannot be read: {e.strerror}")
        return ()
    if not exists:
        problems.append(f"{where}: slide folder {slide} does not exist")
        return ()
    if not slide.is_dir():
        problems.append(f"{where}: {slide} is not a folder; expected a folder of cell images")
        return ()
    try:
        entries = sorted(os.scandir(slide), key=lambda e: e.name)
    except OSError as e:
        problems.append(f"{where}: cannot read slide folder {slide}: {e.strerror}")
        return ()
    cells: list[CellEntry] = []
    slide_rel = slide.relative_to(root).as_posix()
    listed: list[tuple[str, Path, os.stat_result | None, str | None, bool, bool]] = []
    for entry in entries:
        # Plain string work per file: pathlib per entry cost a second per 20,000 files.
        rel = f"{slide_rel}/{entry.name}"
        path = Path(entry.path)
        try:
            is_link = entry.is_symlink()
            st = entry.stat(follow_symlinks=True)  # stat only: nothing is opened while listing
        except OSError as err:
            listed.append((rel, path, None, f"cannot read file: {err.strerror}", False, False))
            continue
        reason = None
        outside = False
        ext = os.path.splitext(entry.name)[1]
        if stat.S_ISDIR(st.st_mode):
            reason = "sub-folder inside a slide folder; cells must lie directly in the slide folder"
        elif (reason := not_regular_reason(st.st_mode)) is not None:
            pass
        elif is_link and not path.resolve().is_relative_to(root_resolved):
            reason, outside = "symbolic link leading outside the batch directory", True
        elif ext.lower() not in IMAGE_EXTENSIONS:
            reason = f"not a cell image file (extension {ext or 'none'!r}; expected {', '.join(IMAGE_EXTENSIONS)})"
        listed.append((rel, path, st, reason, is_link, stat.S_ISREG(st.st_mode) and not outside))
    # Entries that are the same file (hard links, links to another cell) are one cell: the plain
    # file is kept (links after plain files, then by name), each further name is recorded as skipped.
    order = sorted(range(len(listed)), key=lambda i: (listed[i][4], listed[i][0]))
    dup_of: dict[int, str] = {}
    for i in order:
        rel, _, found, _, _, openable = listed[i]
        if found is None or not openable:
            continue
        key = (found.st_dev, found.st_ino)
        if key in seen:
            dup_of[i] = seen[key]
        else:
            seen[key] = rel
    for i, (rel, path, found, reason, _, openable) in enumerate(listed):
        if found is None:
            cells.append(CellEntry(rel, path, 0, 0, reason, openable=False))
            continue
        if i in dup_of:
            reason, openable = f"same file as {dup_of[i]}", False
        cells.append(
            CellEntry(rel, path, found.st_size, found.st_mtime_ns, reason, found.st_dev, found.st_ino, openable)
        )
    if not any(c.rejected is None for c in cells):
        extra = f" ({len(cells)} other file(s))" if cells else ""
        problems.append(
            f"{where}: slide folder {slide} has no cell images{extra}; expected at least one "
            f"{', '.join(IMAGE_EXTENSIONS)} file"
        )
    return tuple(cells)


def _read_cell_labels(path: Path, samples: dict[str, Sample], problems: list[str]) -> dict[tuple[str, str], str]:
    rows = _csv_rows(path)
    if not rows:
        problems.append(f"{path}: empty file; expected a header {','.join(CELL_LABEL_COLUMNS)}")
        return {}
    header = [h.strip() for h in rows[0]]
    if header != list(CELL_LABEL_COLUMNS):
        problems.append(f"{path}: header is {shown(','.join(header))}; expected exactly {','.join(CELL_LABEL_COLUMNS)}")
        return {}
    labels: dict[tuple[str, str], str] = {}
    for lineno, r in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in r):
            continue
        if len(r) != 3 or not all(c.strip() for c in r):
            problems.append(f"{path} row {lineno}: expected three non-empty values sample_id,file,label")
            continue
        sid, file, label = (c.strip() for c in r)
        sample = samples.get(sid)
        if sample is None:
            problems.append(f"{path} row {lineno}: sample_id {shown(sid)} is not in the manifest")
            continue
        names = {PurePosixPath(c.rel_path).name for c in sample.cells}
        if file not in names:
            problems.append(f"{path} row {lineno}: file {shown(file)} is not in slide folder {shown(sample.slide_dir)}")
            continue
        if (sid, file) in labels:
            problems.append(f"{path} row {lineno}: duplicate label for {sid}/{file}")
            continue
        labels[(sid, file)] = label
    return labels


def read_slide_set(batch_dir: Path | str) -> SlideSet:
    """Read and check a batch; raises one WbcvError listing every batch-level problem."""
    root = Path(batch_dir)
    if not root.exists():
        raise WbcvError(f"{root}: batch directory does not exist")
    if not root.is_dir():
        raise WbcvError(f"{root}: not a directory; expected a batch directory with a manifest")
    if not os.access(root, os.R_OK | os.X_OK):
        raise WbcvError(f"{root}: batch directory is not readable")
    manifest = _find_manifest(root)
    if manifest.suffix == ".csv":
        batch_id, rows = None, _manifest_rows_csv(manifest)
    else:
        batch_id, rows = _manifest_rows_yaml(manifest)
    if not rows:
        raise WbcvError(f"{manifest}: the manifest lists no samples")

    problems: list[str] = []
    first_seen: dict[str, str] = {}
    dir_seen: dict[str, str] = {}
    seen_files: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) -> the cell that file is, across the batch
    samples: list[Sample] = []
    for where, raw in rows:
        fields = _check_fields(manifest, where, raw, problems)
        if fields is None:
            continue
        sid = fields["sample_id"]
        if sid in first_seen:
            problems.append(f"{root / where}: duplicate sample_id {shown(sid)} (first at {first_seen[sid]})")
            continue
        first_seen[sid] = where
        rel = fields.pop("slide_dir", sid)
        slide = _safe_slide_dir(root, rel, str(root / where), problems)
        if slide is None:
            continue
        key = slide.resolve().as_posix()
        if key in dir_seen:
            problems.append(f"{root / where}: slide folder {shown(rel)} is also used by {dir_seen[key]}")
            continue
        dir_seen[key] = where
        cells = _list_slide(root, slide, str(root / where), problems, seen_files)
        fields.pop("sample_id")
        samples.append(Sample(sid, PurePosixPath(rel.replace("\\", "/")).as_posix(), where, fields, cells))

    claimed = {PurePosixPath(s.slide_dir).parts[0] for s in samples}
    try:
        unlisted = tuple(
            sorted(
                e.name for e in os.scandir(root) if e.is_dir() and e.name not in claimed and not e.name.startswith(".")
            )
        )
    except OSError as e:
        raise WbcvError(f"{root}: cannot list the batch directory: {e.strerror}") from None

    labels: dict[tuple[str, str], str] = {}
    labels_path = root / CELL_LABELS_NAME
    if labels_path.is_file() and not problems:  # labels refer to samples: check them once those are sound
        labels = _read_cell_labels(labels_path, {s.sample_id: s for s in samples}, problems)
    if problems:
        head = f"{root}: the batch cannot be processed ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
        raise WbcvError("\n".join([head, *(f"  - {p}" for p in listing(problems))]))
    return SlideSet(
        root=root,
        manifest_path=manifest,
        batch_id=batch_id,
        samples=tuple(samples),
        unlisted_dirs=unlisted,
        cell_labels=labels,
        cell_labels_path=labels_path if labels_path.is_file() else None,
    )
