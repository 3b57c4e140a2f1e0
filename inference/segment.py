"""`wbcv segment`: a batch of whole microscope fields in, a batch of white-cell crops out.

FIELDS_DIR is laid out like the batch `wbcv infer` reads (``slideset.py``: a manifest listing the
sample ids, one folder of images per sample), except that each image is a whole field. The
manifest is read and checked by the same reader; every batch-level problem (no manifest, a sample
folder missing or empty, an unknown field) is one ``WbcvError``.

BATCH_DIR (new or empty) receives:

* the manifest, copied byte for byte (same name, same sample ids and folders; a ``cell_labels.csv``
  is not carried over: its file names are fields, not crops);
* one folder per sample (the manifest's ``slide_dir``) of white-cell crops, one PNG per white cell
  named ``FIELDSTEM_x0_y0_x1_y1.png`` after the field and the cell's box in field pixels (when two
  fields of a sample share a stem, e.g. ``a.jpg`` and ``a.png``, the whole name stands for the stem:
  ``a_jpg_...``). A crop is the square of ``CROP_CONTEXT`` times the box's longer side around the
  box's centre, padded with the field's background colour where it leaves the field;
* ``fields.parquet`` (one row per field file given, analysed or skipped, with the reason) and
  ``detections.parquet`` (one row per object found), ``wbcv.base.tables`` FIELDS_SCHEMA and
  DETECTIONS_SCHEMA;
* ``field_samples.parquet``: one row per sample: fields given, analysed and skipped, white cells
  cropped, red cells and platelets counted (``FIELD_SAMPLES_SCHEMA``; the red-cell and platelet
  counts per sample that absolute RBC/PLT measurands would start from);
* ``segment.json``: the fields' manifest sha256, the settings, the software version and the
  summary (``wbcv run --fields`` reuses a batch whose record matches instead of segmenting again).

**Atomic.** The batch is written into a staging folder next to BATCH_DIR (``.segmenting-NAME``,
locked while written) and renamed to BATCH_DIR when complete: an interrupted ``segment`` leaves no
partial BATCH_DIR, and the same command run again removes the stale staging folder and starts
over (a field takes about 20 ms; nothing to resume).

Fields that cannot be used are skipped with the reason, never a crash: a file that is not an image
or is empty, corrupt, too large (the decompression-bomb pixel limit, checked on the header), not
a regular file; a field that is blank, overexposed, too dark, uniform or out of focus
(``fields.field_problem``). A field in which no white cell was found is analysed (its red cells
and platelets are counted) and its ``skipped_reason`` says "no white cell found".

White cells whose box touches the field's border are kept and flagged by default (the fields of a
sample are assumed not to overlap, see ``fields.py``); ``drop_edge_wbc`` leaves them uncropped for
overlapping tiles. They stay in detections.parquet either way.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

import numpy as np
import polars as pl
from PIL import Image

from wbcv import __version__
from wbcv.base.atomic import atomic_write_json, atomic_write_parquet, fsync_dir, sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.runstore import remove_tree
from wbcv.base.tables import (
    DETECTIONS_FILE,
    DETECTIONS_SCHEMA,
    FIELD_SAMPLES_FILE,
    FIELD_SAMPLES_SCHEMA,
    FIELDS_FILE,
    FIELDS_SCHEMA,
)
from wbcv.inference.decode import DEFAULT_MAX_PIXELS, CellRejected, decode_image, max_file_bytes, read_cell_file
from wbcv.inference.fields import Detection, FieldAnalysis, FieldParams, analyse_field
from wbcv.inference.slideset import CellEntry, Sample, SlideSet, read_slide_set

#: A crop's side, as a multiple of the white cell's box's longer side (the cell fills two thirds).
CROP_CONTEXT: Final[float] = 1.5
NO_WBC: Final[str] = "no white cell found"
#: The batch's record of how it was made (fields manifest hash, settings, summary).
SEGMENT_RECORD: Final[str] = "segment.json"
#: The batch is written into ``.segmenting-NAME`` next to BATCH_DIR, then renamed.
STAGING_PREFIX: Final[str] = ".segmenting-"
SEGMENT_RECORD_MAX_BYTES: Final[int] = 1 << 20


@dataclass
class SegmentSummary:
    out_dir: Path
    n_samples: int = 0
    n_fields: int = 0
    n_analysed: int = 0
    n_crops: int = 0
    n_rbc: int = 0
    n_platelets: int = 0
    n_wbc_at_edge: int = 0
    n_wbc_dropped_at_edge: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> fields
    samples_without_crops: list[str] = field(default_factory=list)


def _check_out(out_dir: Path, fields_dir: Path) -> None:
    if out_dir.resolve() == fields_dir.resolve() or out_dir.resolve().is_relative_to(fields_dir.resolve()):
        raise WbcvError(f"{out_dir}: the output batch must lie outside FIELDS_DIR {fields_dir}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise WbcvError(f"{out_dir}: exists and is not a folder; expected a new or empty folder for the batch")
        if any(out_dir.iterdir()):
            raise WbcvError(f"{out_dir}: folder is not empty; expected a new or empty folder for the batch")


def staging_dir(out_dir: Path) -> Path:
    """Where the batch is written before it is renamed to ``out_dir`` (next to it, same file system)."""
    return out_dir.parent / f"{STAGING_PREFIX}{out_dir.name}"


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A fresh staging folder next to ``out_dir``, locked while we write it.

    A staging folder left by an interrupted ``segment`` (its lock is free) is removed and the
    batch is made again from the start; one locked by a running ``segment`` is refused.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out_dir)
    lock_path = out_dir.parent / f"{STAGING_PREFIX}{out_dir.name}.lock"
    with open(lock_path, "a+b") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WbcvError(
                f"{out_dir}: another `wbcv segment` is writing this batch ({staging}); wait for it to finish"
            ) from None
        try:
            if staging.exists():
                remove_tree(staging)
            staging.mkdir()
            yield staging
        finally:
            if staging.exists():
                remove_tree(staging)
            lock_path.unlink(missing_ok=True)


def _publish(staging: Path, out_dir: Path) -> None:
    """The commit point: the finished batch takes the place of the (absent or empty) ``out_dir``."""
    fsync_dir(staging)
    if out_dir.exists():
        out_dir.rmdir()  # checked empty before we started; rmdir refuses it if it has been filled since
    os.rename(staging, out_dir)
    fsync_dir(out_dir.parent)


def read_segment_record(batch_dir: Path) -> dict[str, Any] | None:
    """The ``segment.json`` of a batch written by ``segment_batch``, or None when there is none."""
    path = Path(batch_dir) / SEGMENT_RECORD
    if not path.is_file():
        return None
    expected = "expected the JSON that `wbcv segment` writes"
    if path.stat().st_size > SEGMENT_RECORD_MAX_BYTES:
        raise WbcvError(f"{path}: {path.stat().st_size} bytes, too large for a segment record; {expected}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WbcvError(f"{path}: cannot read the segment record ({e}); {expected}") from None
    if not isinstance(record, dict):
        raise WbcvError(f"{path}: expected a JSON object (the segment record), got {type(record).__name__}")
    return record


def segment_key(manifest_path: Path, params: FieldParams, max_pixels: int, drop_edge_wbc: bool) -> dict[str, Any]:
    """What decides a batch's content: the fields' manifest (by content) and the analysis settings."""
    return {
        "fields_manifest_sha256": sha256_file(manifest_path),
        "method": params.method,
        "rbc_diameter_px": params.rbc_diameter_px,
        "max_pixels": max_pixels,
        "drop_edge_wbc": drop_edge_wbc,
        "software_version": __version__,
    }


def _crop(rgb: np.ndarray, det: Detection, background: tuple[float, float, float]) -> np.ndarray:
    hh, ww = rgb.shape[:2]
    side = max(2, math.ceil(CROP_CONTEXT * max(det.x1 - det.x0, det.y1 - det.y0)))
    y0 = (det.y0 + det.y1) // 2 - side // 2
    x0 = (det.x0 + det.x1) // 2 - side // 2
    out = np.empty((side, side, 3), np.uint8)
    out[...] = np.clip(np.rint(background), 0, 255).astype(np.uint8)
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y0 + side, hh), min(x0 + side, ww)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out


def _stems(entries: tuple[CellEntry, ...]) -> dict[str, str]:
    """Crop-name stem per field: its stem, or its whole name with dots as underscores when shared."""
    names = [PurePosixPath(c.rel_path).name for c in entries]
    count = Counter(PurePosixPath(n).stem for n in names)
    return {n: (PurePosixPath(n).stem if count[PurePosixPath(n).stem] == 1 else n.replace(".", "_")) for n in names}


def _field_row(sample_id: str, entry: CellEntry, **values: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(FIELDS_SCHEMA)
    row.update(sample_id=sample_id, field_path=entry.rel_path, bytes=entry.size)
    row.update(values)
    return row


def _read_field(entry: CellEntry, max_pixels: int) -> tuple[bytes, np.ndarray]:
    if not entry.openable:
        raise CellRejected("not opened")
    data = read_cell_file(entry.abs_path, max_file_bytes(max_pixels), (entry.dev, entry.ino))
    return data, decode_image(data, max_pixels)


def _segment_field(
    sample: Sample,
    entry: CellEntry,
    stem: str,
    slide_out: Path,
    out_dir: Path,
    params: FieldParams,
    max_pixels: int,
    drop_edge_wbc: bool,
    detections: list[dict[str, object]],
) -> dict[str, object]:
    """Analyse one field, write its crops, append its detections; return its fields.parquet row."""
    if entry.rejected is not None:
        return _field_row(sample.sample_id, entry, skipped_reason=entry.rejected)
    try:
        data, rgb = _read_field(entry, max_pixels)
    except CellRejected as e:
        return _field_row(sample.sample_id, entry, skipped_reason=str(e))
    except OSError as e:
        return _field_row(sample.sample_id, entry, skipped_reason=f"cannot read file: {e.strerror or e}")
    digest = hashlib.sha256(data).hexdigest()
    height, width = rgb.shape[:2]
    result: FieldAnalysis = analyse_field(rgb, params)
    base = {"sha256": digest, "bytes": len(data), "width": width, "height": height}
    if result.problem is not None:
        return _field_row(sample.sample_id, entry, **base, skipped_reason=result.problem)
    n_crops = n_dropped = 0
    for det in result.detections:
        crop_path = None
        if det.kind == "wbc" and det.touches_edge and drop_edge_wbc:
            n_dropped += 1
        elif det.kind == "wbc":
            name = f"{stem}_{det.x0}_{det.y0}_{det.x1}_{det.y1}.png"
            Image.fromarray(_crop(rgb, det, result.background)).save(slide_out / name, optimize=False)
            crop_path = (slide_out / name).relative_to(out_dir).as_posix()
            n_crops += 1
        detections.append(
            {
                "sample_id": sample.sample_id,
                "field_path": entry.rel_path,
                "kind": det.kind,
                "x0": det.x0,
                "y0": det.y0,
                "x1": det.x1,
                "y1": det.y1,
                "score": det.score,
                "touches_edge": det.touches_edge,
                "crop_path": crop_path,
            }
        )
    n_wbc = result.count("wbc")
    return _field_row(
        sample.sample_id,
        entry,
        **base,
        wbc=n_crops,
        wbc_at_edge=sum(d.touches_edge for d in result.of_kind("wbc")),
        wbc_dropped_at_edge=n_dropped,
        rbc=result.count("rbc"),
        platelets=result.count("platelet"),
        skipped_reason=NO_WBC if n_wbc == 0 else None,
    )


def segment_batch(
    fields_dir: Path | str,
    out_dir: Path | str,
    params: FieldParams | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    drop_edge_wbc: bool = False,
) -> SegmentSummary:
    """Find the white cells of every field of a batch and write the crop batch (see the module docstring)."""
    fields_root, out = Path(fields_dir), Path(out_dir)
    slides = read_slide_set(fields_root)
    _check_out(out, fields_root)
    p = params or FieldParams()
    key = segment_key(slides.manifest_path, p, max_pixels, drop_edge_wbc)
    summary = SegmentSummary(out_dir=out, n_samples=len(slides.samples))
    with _staging(out) as staging:
        _segment_into(staging, slides, p, max_pixels, drop_edge_wbc, summary)
        record = {"fields_dir": str(fields_root.resolve()), **key, "summary": _summary_json(summary)}
        atomic_write_json(staging / SEGMENT_RECORD, record)
        _check_out(out, fields_root)
        _publish(staging, out)
    return summary


def segment_or_reuse(
    fields_dir: Path | str,
    out_dir: Path | str,
    params: FieldParams | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    drop_edge_wbc: bool = False,
) -> SegmentSummary | None:
    """``segment_batch``, unless ``out_dir`` already holds the batch it would write; then None.

    "Already holds": its ``segment.json`` names the same fields manifest (by sha256) and the same
    settings and software version (``segment_key``). A non-empty ``out_dir`` that is another batch
    is refused with what differs. This is what lets ``wbcv run --fields`` be run again after an
    interruption in inference: the crops are not made twice, inference resumes.
    """
    fields_root, out = Path(fields_dir), Path(out_dir)
    record = read_segment_record(out) if out.is_dir() else None
    if record is None:
        return segment_batch(fields_root, out, params, max_pixels, drop_edge_wbc)
    slides = read_slide_set(fields_root)
    key = segment_key(slides.manifest_path, params or FieldParams(), max_pixels, drop_edge_wbc)
    differ = [k for k, v in key.items() if record.get(k) != v]
    if differ:
        raise WbcvError(
            f"{out}: holds a batch segmented from other fields or with other settings (differs in: "
            f"{', '.join(differ)}); expected a new or empty folder, or the batch of these fields and settings"
        )
    return None


def _segment_into(
    out: Path, slides: SlideSet, p: FieldParams, max_pixels: int, drop_edge_wbc: bool, summary: SegmentSummary
) -> None:
    shutil.copyfile(slides.manifest_path, out / slides.manifest_path.name)
    rows: list[dict[str, object]] = []
    detections: list[dict[str, object]] = []
    for sample in slides.samples:
        slide_out = out.joinpath(*PurePosixPath(sample.slide_dir).parts)
        slide_out.mkdir(parents=True, exist_ok=True)
        stems = _stems(sample.cells)
        crops_before = summary.n_crops
        for entry in sample.cells:
            stem = stems[PurePosixPath(entry.rel_path).name]
            row = _segment_field(sample, entry, stem, slide_out, out, p, max_pixels, drop_edge_wbc, detections)
            rows.append(row)
            _tally(summary, row)
        if summary.n_crops == crops_before:
            summary.samples_without_crops.append(sample.sample_id)
    atomic_write_parquet(out / FIELDS_FILE, pl.DataFrame(rows, schema=FIELDS_SCHEMA))
    atomic_write_parquet(out / DETECTIONS_FILE, pl.DataFrame(detections, schema=DETECTIONS_SCHEMA))
    atomic_write_parquet(out / FIELD_SAMPLES_FILE, per_sample(slides, pl.DataFrame(rows, schema=FIELDS_SCHEMA)))


def per_sample(slides: SlideSet, fields: pl.DataFrame) -> pl.DataFrame:
    """One row per sample (manifest order): fields given, analysed, skipped; white cells cropped,
    red cells and platelets counted in the analysed fields; their area, the blood volume imaged and
    the concentrations (``smear_concentrations``; ``FIELD_SAMPLES_SCHEMA``)."""
    analysed = pl.col("rbc").is_not_null()
    area = pl.col("width").cast(pl.Float64) * pl.col("height").cast(pl.Float64)
    sums = fields.group_by("sample_id").agg(
        pl.len().alias("fields_given"),
        analysed.sum().alias("fields_analysed"),
        (~analysed).sum().alias("fields_skipped"),
        pl.col("wbc").sum().alias("wbc_cropped"),
        pl.col("rbc").sum().alias("rbc_counted"),
        pl.col("platelets").sum().alias("platelets_counted"),
        area.filter(analysed).sum().alias("analysed_px"),
    )
    order = pl.DataFrame({"sample_id": [s.sample_id for s in slides.samples]}, schema={"sample_id": pl.String()})
    joined = order.join(sums, on="sample_id", how="left").fill_null(0)
    scale = {s.sample_id: s.fields for s in slides.samples}
    rows = []
    for r in joined.iter_rows(named=True):
        f = scale[r["sample_id"]]
        rows.append(
            r
            | smear_concentrations(
                r["rbc_counted"],
                r["platelets_counted"],
                r["fields_analysed"],
                r["analysed_px"],
                f.get("um_per_px"),
                f.get("field_area_um2"),
                f.get("smear_thickness_um"),
            )
        )
    out = pl.DataFrame(rows, schema_overrides={c: FIELD_SAMPLES_SCHEMA[c] for c in CONCENTRATION_COLUMNS})
    return out.select([pl.col(c).cast(t) for c, t in FIELD_SAMPLES_SCHEMA.items()])


CONCENTRATION_COLUMNS: Final[tuple[str, ...]] = (
    "analysed_area_um2",
    "imaged_blood_ul",
    "rbc_10e6_per_ul",
    "plt_10e3_per_ul",
)
#: cubic micrometres in one microlitre (1 uL = 1 mm^3 = 10^9 um^3)
UM3_PER_UL: Final[float] = 1e9


def smear_concentrations(
    rbc: int,
    platelets: int,
    fields_analysed: int,
    analysed_px: float,
    um_per_px: float | None,
    field_area_um2: float | None,
    smear_thickness_um: float | None,
) -> dict[str, float | None]:
    """Red cells (10^6/uL) and platelets (10^3/uL) per blood volume imaged in a sample's analysed fields.

    area (um^2) = analysed pixels x um_per_px^2, or fields analysed x field_area_um2 (um_per_px wins);
    volume (uL) = area x smear_thickness_um / 10^9; concentration = count / volume. The thickness is
    a volume factor, the smear's blood volume per area (an effective monolayer thickness): it
    depends on how the smear was spread, where it was scanned and the haematocrit, and must be
    calibrated per laboratory (e.g. against the analyzer's RBC on a set of samples); nothing here
    estimates it. Example: a Raabin field (575 px at about 0.052 um/px: 900 um^2) with 12 red cells
    reads 5 x 10^6/uL at a thickness of 2.7 um. Null where an input is missing or no field was analysed.
    """
    area: float | None = None
    if um_per_px is not None:
        area = analysed_px * um_per_px**2
    elif field_area_um2 is not None:
        area = fields_analysed * field_area_um2
    volume = None if area is None or smear_thickness_um is None or area <= 0 else area * smear_thickness_um / UM3_PER_UL
    return {
        "analysed_area_um2": area,
        "imaged_blood_ul": volume,
        "rbc_10e6_per_ul": None if volume is None else rbc / volume / 1e6,
        "plt_10e3_per_ul": None if volume is None else platelets / volume / 1e3,
    }


def _summary_json(s: SegmentSummary) -> dict[str, Any]:
    return {
        "samples": s.n_samples,
        "fields": s.n_fields,
        "analysed": s.n_analysed,
        "crops": s.n_crops,
        "rbc": s.n_rbc,
        "platelets": s.n_platelets,
        "skipped": dict(s.skipped),
        "samples_without_crops": s.samples_without_crops,
    }


def _tally(summary: SegmentSummary, row: dict[str, object]) -> None:
    summary.n_fields += 1
    reason = row["skipped_reason"]
    if row["rbc"] is not None:
        summary.n_analysed += 1
        summary.n_crops += int(row["wbc"])  # type: ignore[call-overload]
        summary.n_rbc += int(row["rbc"])  # type: ignore[call-overload]
        summary.n_platelets += int(row["platelets"])  # type: ignore[call-overload]
        summary.n_wbc_at_edge += int(row["wbc_at_edge"])  # type: ignore[call-overload]
        summary.n_wbc_dropped_at_edge += int(row["wbc_dropped_at_edge"])  # type: ignore[call-overload]
    if isinstance(reason, str):
        summary.skipped[_reason_kind(reason)] += 1


def _reason_kind(reason: str) -> str:
    """A reason without its figures, to count like reasons together ("out of focus", "empty file")."""
    return reason.split(":")[0].split(" (")[0]
