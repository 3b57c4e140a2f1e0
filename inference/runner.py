"""The local batch runner: slide set in, per-cell predictions and per-sample counts out.

Pipeline (memory stays flat however large the batch): slides are cut into fixed chunks of
``chunk_size`` files in file-name order; ``workers`` threads each take a chunk, read, hash and
decode its files and classify them in one batched forward pass with ``threads_per_worker`` torch
threads. simplejpeg, Pillow and torch release the GIL, so the workers run in parallel, and with
one torch thread each there are never more busy threads than cores (a two-thread forward pass
beside two decoding threads measured 25 % slower on 2 cores: the cores were oversubscribed).
At most ``2 * workers + 1`` chunks are in flight; the main thread takes results in order and,
when a slide's last chunk is done, writes the slide as one part file. Because a slide is always
cut into the same chunks, its predictions do not depend on what else was in the batch or on
whether the run was interrupted, so a resumed run gives the same bytes as an uninterrupted one.

Everything around the classification (run key, working run, resumption, tables, run record,
sealing) is ``execute_run``, shared with the Ray engine (``wbcv.inference.ray_engine``), which cuts
slides with the same ``chunks`` and decodes and classifies them with the same ``decode_chunk``
and ``classify``; so both engines write the same tables.

Output tables (Parquet) are described by ``PREDICTION_SCHEMA``, ``COUNT_COLUMNS`` and
``SKIPPED_SCHEMA``; ``validation`` reads them, never this module's internals.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from wbcv.base.errors import WbcvError
from wbcv.base.records import BatchRef, DomainCheck, InferenceRecord, InferenceSummary, ModelRef
from wbcv.base.runstore import AlreadySealed, WorkingRun, read_record_of
from wbcv.base.software import software_info
from wbcv.base.tables import (
    COUNT_COLUMNS,
    COUNTS_FILE,
    FIELD_COUNT_COLUMNS,
    FIELD_SAMPLES_FILE,
    INPUTS_FILE,
    PREDICTION_SCHEMA,
    PREDICTIONS_FILE,
    SAMPLE_FIELDS,
    SKIPPED_FILE,
    SKIPPED_SCHEMA,
)
from wbcv.base.taxonomy import CELL_CLASSES, LINEAGES, OUTCOMES
from wbcv.inference.acquisition import SampleCorrection, decode_corrected
from wbcv.inference.artifact import InputSpec, LoadedModel
from wbcv.inference.combine import ABSTAIN_REASONS, UNCLASSIFIED_INDEX
from wbcv.inference.decode import DEFAULT_MAX_PIXELS, CellRejected, decode_cell, max_file_bytes, read_cell_file
from wbcv.inference.domain import DomainVerdict, check, feature_cells, image_cells
from wbcv.inference.framing import frame_cells, wbc_size_reason, work_size
from wbcv.inference.predict import correction_of, decide
from wbcv.inference.slideset import CellEntry, Sample, SlideSet

#: Part files hold both: prediction columns plus the skip reason (null for a decoded cell), and
#: the per-cell inputs of the domain check (``wbcv.inference.domain``): the image statistics as
#: scanned and the feature score with its nearest class (null when the model has no domain profile).
DOMAIN_CELL_SCHEMA: Final[dict[str, pl.DataType]] = {
    "surround_l": pl.Float32(),
    "surround_alpha": pl.Float32(),
    "surround_beta": pl.Float32(),
    "diameter_px": pl.Float32(),
    "domain_feature_score": pl.Float32(),  # standardised for the nearest class (wbcv.inference.domain)
    "domain_class": pl.Int8(),  # nearest class in feature space, CELL_CLASSES index
}
PART_SCHEMA: Final[dict[str, pl.DataType]] = {**PREDICTION_SCHEMA, "skip_reason": pl.String(), **DOMAIN_CELL_SCHEMA}


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class InferenceParams:
    """Knobs of a run. All of them are recorded; those in ``identity()`` also name the run."""

    chunk_size: int = 256
    workers: int = field(default_factory=available_cores)
    threads_per_worker: int = 1
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "cpu"  # where the network runs: "cuda" for the Ray engine's GPU actors

    def __post_init__(self) -> None:
        for name in ("chunk_size", "workers", "threads_per_worker", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise WbcvError(f"parameter {name} must be at least 1, got {getattr(self, name)}")

    def identity(self) -> dict[str, int | str]:
        """Parameters that can change a single output bit (thread count: float reduction order;
        device: GPU arithmetic differs from the CPU's). The CPU device is left out so that the
        keys of CPU runs stay what they were before the device existed."""
        ident: dict[str, int | str] = {
            "chunk_size": self.chunk_size,
            "threads_per_worker": self.threads_per_worker,
            "max_image_pixels": self.max_image_pixels,
        }
        if self.device != "cpu":
            ident["device"] = self.device
        return ident


@dataclass(frozen=True)
class InferenceResult:
    run_dir: Path
    record: InferenceRecord
    resumed: bool
    slides_done_before: int
    already_finished: bool = False


@dataclass
class _Chunk:
    sample_index: int
    is_last: bool
    meta: list[dict[str, Any]]
    scores: dict[str, np.ndarray] | None  # one row per meta entry without skip_reason


def decode_chunk(
    entries: tuple[CellEntry, ...],
    spec: InputSpec,
    max_pixels: int,
    um_per_px: float | None = None,
    correction: SampleCorrection | None = None,
) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """Read, hash, decode and frame one chunk: one meta entry per file, pixels of the decoded ones in order.

    Shared by the engines: what is recorded for a file that cannot be read or decoded is decided here.
    A decoded image in which a cell-framing model finds no white cell gets ``no_cell`` (the
    locator's reason) in its meta entry: it is classified as unclassified, ``no_cell_found``.
    The located cell's diameter is recorded in pixels of the file and, with the sample's
    ``um_per_px``, in µm; a cell whose size no white cell has (``framing.wbc_size_reason``) is
    treated as no cell found. ``correction`` (``sample_correction``) frames the sample's images at
    its magnification, light and stain hue.
    """
    size = work_size(spec)
    crop = spec.crop if spec.framing == "image" else 1.0
    meta: list[dict[str, Any]] = []
    images: list[np.ndarray] = []
    for entry in entries:
        m: dict[str, Any] = {
            "cell_path": entry.rel_path,
            "sha256": None,
            "bytes": entry.size,
            "skip_reason": entry.rejected,
        }
        meta.append(m)
        if not entry.openable:  # not a regular file inside the batch, or a second name of one: never opened
            continue
        try:
            data = read_cell_file(entry.abs_path, max_file_bytes(max_pixels), (entry.dev, entry.ino))
        except CellRejected as e:
            m["skip_reason"] = m["skip_reason"] or str(e)
            continue
        except OSError as e:
            m["skip_reason"] = m["skip_reason"] or f"cannot read file: {e.strerror}"
            continue
        m["sha256"], m["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
        if entry.rejected is not None:
            continue
        try:
            if correction is not None and not correction.is_identity:
                cell = decode_corrected(data, spec, correction, max_pixels)
            else:
                cell = decode_cell(data, size, max_pixels, crop)
        except CellRejected as e:
            m["skip_reason"] = str(e)
            continue
        m.update(source_mode=cell.source_mode, source_width=cell.source_width, source_height=cell.source_height)
        if correction is not None and spec.acquisition_reference is not None:
            m["acquisition_scale"] = correction.scale
        images.append(cell.pixels)
    if not images:
        return meta, None
    framed = frame_cells(images, spec)
    decoded = [m for m in meta if m["skip_reason"] is None]
    surround = framed.surround_lab if framed.surround_lab is not None else np.full((len(decoded), 3), np.nan)
    for m, lost, reason, colour, d in zip(
        decoded, framed.no_cell, framed.reasons, surround, framed.diameter_px, strict=True
    ):
        m["surround_lab"] = [float(v) for v in colour]  # the domain check's image statistics
        m["diameter_px"] = float(d) if np.isfinite(d) else None
        if lost:
            m["no_cell"] = reason
            continue
        if d == d:  # cell framing found a cell: its diameter in the file's pixels (work image = centre square)
            m["cell_diameter_px"] = float(d) * min(m["source_width"], m["source_height"]) / size
            if um_per_px is not None:
                m["cell_diameter_um"] = m["cell_diameter_px"] * um_per_px
                m["no_cell"] = wbc_size_reason(m["cell_diameter_um"])
    return meta, framed.pixels


def sample_correction(sample: Sample, model: LoadedModel, max_pixels: int) -> SampleCorrection:
    """The sample's acquisition correction (``wbcv.inference.predict.correction_of``), from the
    files the framing pass will open."""
    openable = [e for e in sample.cells if e.openable and e.rejected is None]
    limit = max_file_bytes(max_pixels)
    readers = [functools.partial(read_cell_file, e.abs_path, limit, (e.dev, e.ino)) for e in openable]
    return correction_of(model, readers, max_pixels)


def no_cell_mask(meta: list[dict[str, Any]]) -> np.ndarray:
    """Bool per decoded cell of a chunk (in pixel order): no white cell was found in it."""
    return np.array([bool(m.get("no_cell")) for m in meta if m["skip_reason"] is None], dtype=bool)


def _decode_and_classify(
    sample_index: int,
    is_last: bool,
    entries: tuple[CellEntry, ...],
    model: LoadedModel,
    max_pixels: int,
    um_per_px: float | None = None,
    correction: Future[SampleCorrection] | None = None,
) -> _Chunk:
    measured = None if correction is None else correction.result()
    meta, pixels = decode_chunk(entries, model.input, max_pixels, um_per_px, measured)
    scores = classify(model, pixels, no_cell=no_cell_mask(meta)) if pixels is not None else None
    return _Chunk(sample_index, is_last, meta, scores)


def chunks(samples: list[tuple[int, Sample]], chunk_size: int) -> Iterator[tuple[int, bool, tuple[CellEntry, ...]]]:
    for index, sample in samples:
        cells = sample.cells
        starts = list(range(0, len(cells), chunk_size)) or [0]
        for j, start in enumerate(starts):
            yield index, j == len(starts) - 1, cells[start : start + chunk_size]


def _prefetched(pool: ThreadPoolExecutor, jobs: Iterator[tuple[Any, ...]], depth: int, fn: Any) -> Iterator[_Chunk]:
    """Run ``fn`` over ``jobs`` in the pool, at most ``depth`` ahead, yielding results in order."""
    pending: deque[Future[_Chunk]] = deque()
    for job in jobs:
        pending.append(pool.submit(fn, *job))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def classify(
    model: LoadedModel, pixels: np.ndarray, device: str = "cpu", no_cell: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """One batched forward pass over a chunk's decoded cells (on ``device``); combination on the CPU.
    ``no_cell`` marks the cells in which no white cell was found: unclassified, ``no_cell_found``."""
    with torch.inference_mode():
        logits = model.net(torch.from_numpy(pixels).to(device))
        if device != "cpu":
            logits = type(logits)(*(None if t is None else t.cpu() for t in logits))
        out = decide(model, logits, no_cell)
    cols: dict[str, np.ndarray] = {
        "predicted": out.predicted.numpy(),
        "reason": out.abstain_reason.numpy(),
        "confidence": out.confidence.numpy(),
    }
    for i, c in enumerate(CELL_CLASSES):
        cols[f"p_{c}"] = out.probabilities[:, i].numpy()
        cols[f"ova_{c}"] = out.ova_scores[:, i].numpy()
    for i, g in enumerate(LINEAGES):
        cols[f"lineage_{g}"] = out.lineage_probabilities[:, i].numpy()
    if model.domain is not None and logits.features is not None:
        u, nearest = feature_cells(model.domain, logits.features)
        cols["domain_feature_score"], cols["domain_class"] = u.astype(np.float32), nearest.astype(np.int8)
    return cols


def _slide_frame(
    sample: Sample,
    metas: list[dict[str, Any]],
    scores: list[dict[str, np.ndarray]],
    model_id: str,
    labels: dict[tuple[str, str], str],
) -> pl.DataFrame:
    """One slide's rows in file order; the decoded cells' scores are joined on by row position."""
    columns: dict[str, list[Any]] = {
        "sample_id": [sample.sample_id] * len(metas),
        "cell_path": [m["cell_path"] for m in metas],
        "sha256": [m["sha256"] for m in metas],
        "bytes": [m["bytes"] for m in metas],
        "source_mode": [m.get("source_mode") for m in metas],
        "source_width": [m.get("source_width") for m in metas],
        "source_height": [m.get("source_height") for m in metas],
        "cell_diameter_px": [m.get("cell_diameter_px") for m in metas],
        "cell_diameter_um": [m.get("cell_diameter_um") for m in metas],
        "expert_label": [labels.get((sample.sample_id, m["cell_path"].rsplit("/", 1)[-1])) for m in metas],
        "acquisition_scale": [m.get("acquisition_scale") for m in metas],
        "model_id": [model_id] * len(metas),
        "skip_reason": [m["skip_reason"] for m in metas],
        **{
            f"surround_{name}": [m["surround_lab"][j] if "surround_lab" in m else None for m in metas]
            for j, name in enumerate(("l", "alpha", "beta"))
        },
        "diameter_px": [m.get("diameter_px") for m in metas],
    }
    frame = pl.DataFrame(columns, schema={k: PART_SCHEMA[k] for k in columns}).with_row_index("_row")
    rows = [i for i, m in enumerate(metas) if m["skip_reason"] is None]
    merged = {k: np.concatenate([s[k] for s in scores]) for k in scores[0]} if scores else {}
    predicted = merged.get("predicted", np.empty(0, dtype=np.int64))
    outcome_index = np.where(predicted == UNCLASSIFIED_INDEX, len(CELL_CLASSES), predicted)
    reasons = [ABSTAIN_REASONS[r] or None for r in merged.get("reason", [])]
    float_columns = [c for c in PART_SCHEMA if c == "confidence" or c.startswith(("p_", "ova_", "lineage_"))]
    scored = pl.DataFrame(
        {
            "_row": pl.Series(rows, dtype=pl.UInt32),
            "predicted_class": pl.Series([OUTCOMES[i] for i in outcome_index], dtype=PART_SCHEMA["predicted_class"]),
            "unclassified": pl.Series(predicted == UNCLASSIFIED_INDEX, dtype=pl.Boolean),
            "abstain_reason": pl.Series(reasons, dtype=pl.String),
            **{c: pl.Series(merged.get(c, np.empty(0, np.float32)), dtype=pl.Float32) for c in float_columns},
            "domain_feature_score": pl.Series(
                merged.get("domain_feature_score", np.full(len(rows), np.nan, np.float32)), dtype=pl.Float32
            ).fill_nan(None),
            "domain_class": pl.Series(merged.get("domain_class", [None] * len(rows)), dtype=pl.Int8),
        }
    )
    return frame.join(scored, on="_row", how="left", maintain_order="left").select(list(PART_SCHEMA))


def write_slide(
    slides: SlideSet,
    index: int,
    metas: list[dict[str, Any]],
    scores: list[dict[str, np.ndarray]],
    model_id: str,
    work: WorkingRun,
) -> None:
    """Write one finished slide (its chunks' metas and scores in chunk order) as its part file."""
    sample = slides.samples[index]
    frame = _slide_frame(sample, metas, scores, model_id, slides.cell_labels)
    work.write_part(index, frame)
    n_skip = frame["skip_reason"].is_not_null().sum()
    if n_skip:
        work.log(f"sample {sample.sample_id}: {n_skip} file(s) skipped")


def run_key(slides: SlideSet, model: LoadedModel, params: InferenceParams) -> str:
    payload = json.dumps(
        {"batch": slides.fingerprint(), "model": model.sha256, "params": params.identity()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def domain_verdict(model: LoadedModel, parts: pl.DataFrame, slides: SlideSet) -> DomainVerdict:
    """The domain check of the batch and of each slide from the part files' per-cell columns."""
    order = [s.sample_id for s in slides.samples]
    cells = parts.filter(pl.col("skip_reason").is_null())
    if model.domain is None:
        return check(None, np.empty(0), np.empty(0), np.empty(0), order)

    def col(name: str) -> np.ndarray:  # a column missing from every part (older parts): not scored
        if name not in cells.columns:
            return np.full(cells.height, np.nan)
        return cells[name].cast(pl.Float64).fill_null(np.nan).to_numpy()

    surround = np.column_stack([col("surround_l"), col("surround_alpha"), col("surround_beta")])
    nearest = np.nan_to_num(col("domain_class"), nan=-1).astype(np.int64)
    image_u = image_cells(model.domain, surround, col("diameter_px"), nearest)
    return check(model.domain, cells["sample_id"].to_numpy(), col("domain_feature_score"), image_u, order)


def domain_record(v: DomainVerdict) -> DomainCheck:
    return DomainCheck(
        verdict=v.verdict,
        score=v.score,
        threshold=v.threshold,
        method=v.method,
        slides_out_of_domain=v.slides_out_of_domain,
    )


def _counts(
    slides: SlideSet, parts: pl.DataFrame, model_id: str, domain_scores: dict[str, float | None] | None = None
) -> pl.DataFrame:
    """Per-sample counts; every manifest sample has a row, also one whose cells were all skipped.

    fraction_c = k_c / n_classified (the differential among cells the model committed to);
    unclassified_fraction = n_unclassified / n_cells.
    """
    samples = pl.DataFrame(
        {
            "sample_id": [s.sample_id for s in slides.samples],
            "slide_dir": [s.slide_dir for s in slides.samples],
            **{f: [s.fields.get(f) for s in slides.samples] for f in SAMPLE_FIELDS},
        },
        schema={"sample_id": pl.String(), "slide_dir": pl.String(), **SAMPLE_FIELDS},
    )
    decoded = pl.col("skip_reason").is_null()
    per_sample = parts.group_by("sample_id").agg(
        n_files=pl.len().cast(pl.Int64),
        n_skipped=(~decoded).sum().cast(pl.Int64),
        n_cells=decoded.sum().cast(pl.Int64),
        n_unclassified=(decoded & pl.col("unclassified")).sum().cast(pl.Int64),
        **{f"k_{c}": (pl.col("predicted_class") == c).sum().cast(pl.Int64) for c in CELL_CLASSES},
    )
    counts = samples.join(per_sample, on="sample_id", how="left", maintain_order="left").with_columns(
        pl.col("^n_.*$", "^k_.*$").fill_null(0)
    )
    n_classified = pl.col("n_cells") - pl.col("n_unclassified")
    counts = (
        counts.with_columns(n_classified=n_classified)
        .with_columns(
            *(
                pl.when(pl.col("n_classified") > 0)
                .then(pl.col(f"k_{c}") / pl.col("n_classified"))
                .alias(f"fraction_{c}")
                for c in CELL_CLASSES
            ),
            unclassified_fraction=pl.when(pl.col("n_cells") > 0).then(pl.col("n_unclassified") / pl.col("n_cells")),
            model_id=pl.lit(model_id),
            domain_score=pl.Series([(domain_scores or {}).get(s.sample_id) for s in slides.samples], dtype=pl.Float64),
        )
        .select(COUNT_COLUMNS)
    )
    return _with_field_counts(counts, slides)


def _with_field_counts(counts: pl.DataFrame, slides: SlideSet) -> pl.DataFrame:
    """``counts`` with FIELD_COUNT_COLUMNS appended from the batch's FIELD_SAMPLES_FILE, when the
    batch was made by ``wbcv segment`` (red cells, platelets and their concentrations per sample)."""
    path = slides.root / FIELD_SAMPLES_FILE
    if not path.is_file():
        return counts
    try:
        fields = pl.read_parquet(path, columns=["sample_id", *FIELD_COUNT_COLUMNS])
    except (pl.exceptions.PolarsError, OSError) as e:
        raise WbcvError(
            f"{path}: cannot read the smear-field counts ({type(e).__name__}); expected the table "
            f"wbcv segment writes, with columns {', '.join(FIELD_COUNT_COLUMNS)}"
        ) from None
    return counts.join(fields, on="sample_id", how="left", maintain_order="left")


def _skipped(slides: SlideSet, parts: pl.DataFrame) -> pl.DataFrame:
    cells = parts.filter(pl.col("skip_reason").is_not_null()).select(
        level=pl.lit("cell"),
        sample_id="sample_id",
        path="cell_path",
        sha256="sha256",
        bytes="bytes",
        reason="skip_reason",
    )
    folders = pl.DataFrame(
        {
            "level": ["folder"] * len(slides.unlisted_dirs),
            "sample_id": [None] * len(slides.unlisted_dirs),
            "path": [f"{d}/" for d in slides.unlisted_dirs],
            "sha256": [None] * len(slides.unlisted_dirs),
            "bytes": [None] * len(slides.unlisted_dirs),
            "reason": ["folder is not listed in the manifest; its images were not processed"]
            * len(slides.unlisted_dirs),
        },
        schema=SKIPPED_SCHEMA,
    )
    return pl.concat([cells.cast(SKIPPED_SCHEMA), folders])  # type: ignore[arg-type]


def _inputs(slides: SlideSet, parts: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """Every input file with its content hash, and one hash over the whole list (sha256sum style)."""
    side = [slides.manifest_path] + ([slides.cell_labels_path] if slides.cell_labels_path else [])
    if (slides.root / FIELD_SAMPLES_FILE).is_file():  # counts.parquet takes the smear-field counts from it
        side.append(slides.root / FIELD_SAMPLES_FILE)
    extra = pl.DataFrame(
        {
            "path": [p.name for p in side],
            "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in side],
            "bytes": [p.stat().st_size for p in side],
        },
        schema={"path": pl.String(), "sha256": pl.String(), "bytes": pl.Int64()},
    )
    cells = parts.filter(pl.col("sha256").is_not_null()).select(path="cell_path", sha256="sha256", bytes="bytes")
    table = pl.concat([extra, cells]).sort("path")
    listing = "".join(f"{h}  {p}\n" for p, h in zip(table["path"], table["sha256"], strict=True))
    return table, hashlib.sha256(listing.encode()).hexdigest()


#: An engine classifies the slides of ``todo`` (index into ``slides.samples``, sample) and writes
#: each finished slide with ``write_slide``; arguments: slides, model, params, work, todo, progress.
Engine = Callable[[SlideSet, LoadedModel, InferenceParams, WorkingRun, list[tuple[int, Sample]], bool], None]


def run_inference(
    slides: SlideSet,
    model: LoadedModel,
    runs_dir: Path | str,
    params: InferenceParams | None = None,
    progress: bool = True,
) -> InferenceResult:
    """Classify every cell of ``slides`` into a new (or resumed) run under ``runs_dir``."""
    params = params or InferenceParams()
    if params.device != "cpu":
        raise WbcvError(f"the local engine runs on the CPU; device {params.device!r} needs the Ray engine's GPU actors")
    return execute_run(slides, model, runs_dir, params, progress, _process, {"name": "local"})


def execute_run(
    slides: SlideSet,
    model: LoadedModel,
    runs_dir: Path | str,
    params: InferenceParams,
    progress: bool,
    engine: Engine,
    engine_record: dict[str, Any],
) -> InferenceResult:
    """Open (or resume) the run, let ``engine`` classify the unfinished slides, then seal it.

    Shared by every engine, so run directories, tables and records do not depend on the engine.
    The engine is not part of the run key: engines cut slides into the same chunks and give the
    same bytes, so a run interrupted under one engine may be resumed by another. ``engine_record``
    goes into run.json as ``engine`` (that of the session that sealed it; log.txt names each one).
    """
    runs_dir = Path(runs_dir)
    key = run_key(slides, model, params)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    started: dict[str, Any] = {
        "run_id": f"{created:%Y%m%dT%H%M%SZ}-{key[:8]}",
        "created_utc": created.isoformat(),
        "key": key,
        "parameters": asdict(params),
    }
    try:
        work, resumed = WorkingRun.open(runs_dir, key, started)
    except AlreadySealed as sealed:
        return InferenceResult(
            sealed.run_dir,
            read_record_of(sealed.run_dir, InferenceRecord, "expected an inference run"),
            True,
            len(slides.samples),
            True,
        )
    t0 = time.perf_counter()
    with work.locked():
        started = work.started
        done = work.finished_parts()
        todo = [(i, s) for i, s in enumerate(slides.samples) if i not in done]
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        work.log(
            f"{now} {'resumed' if resumed else 'started'} (engine {engine_record['name']}): "
            f"{len(done)} of {len(slides.samples)} slides done"
        )
        engine(slides, model, params, work, todo, progress)

        parts = work.read_parts(list(range(len(slides.samples))))
        predictions = parts.filter(pl.col("skip_reason").is_null()).select(list(PREDICTION_SCHEMA))
        domain = domain_verdict(model, parts, slides)
        counts = _counts(slides, parts, model.model_id, domain.slide_scores)
        skipped = _skipped(slides, parts)
        inputs, inputs_hash = _inputs(slides, parts)
        finished = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        work.log(f"{finished} finished: {predictions.height} cells classified, {skipped.height} skipped")
        record = InferenceRecord(
            created_utc=started["created_utc"],
            finished_utc=finished,
            batch=BatchRef(
                path=slides.root.resolve(),
                batch_id=slides.batch_id,
                manifest=slides.manifest_path.name,
                cell_labels=slides.cell_labels_path.name if slides.cell_labels_path else None,
                inputs_sha256=inputs_hash,
                n_samples=len(slides.samples),
                n_files=slides.n_files,
                unlisted_dirs=tuple(slides.unlisted_dirs),
            ),
            model=ModelRef(
                id=model.model_id,
                name=model.name,
                sha256=model.sha256,
                path=model.path.resolve(),
                input_size=model.input.size,
            ),
            parameters=started["parameters"],
            engine=engine_record,
            software=software_info(),
            summary=InferenceSummary(
                n_samples=len(slides.samples),
                n_cells=predictions.height,
                n_unclassified=int(predictions["unclassified"].sum()),
                n_skipped_cells=int((skipped["level"] == "cell").sum()),
                n_unlisted_folders=len(slides.unlisted_dirs),
                resumed=resumed,
                wall_seconds_last_session=round(time.perf_counter() - t0, 3),
            ),
            domain=domain_record(domain),
        )
        run_dir = work.seal(
            runs_dir,
            started["run_id"],
            {PREDICTIONS_FILE: predictions, COUNTS_FILE: counts, SKIPPED_FILE: skipped, INPUTS_FILE: inputs},
            record,
        )
    return InferenceResult(
        run_dir, read_record_of(run_dir, InferenceRecord, "expected an inference run"), resumed, len(done)
    )


def _process(
    slides: SlideSet,
    model: LoadedModel,
    params: InferenceParams,
    work: WorkingRun,
    todo: list[tuple[int, Sample]],
    progress: bool,
) -> None:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(params.threads_per_worker)
    n_total = sum(len(s.cells) for _, s in todo)
    bar = tqdm(total=n_total, unit="cell", desc="classifying", disable=not progress, smoothing=0.1, dynamic_ncols=True)
    metas: list[dict[str, Any]] = []
    scores: list[dict[str, np.ndarray]] = []
    slides_done, t_start = 0, time.perf_counter()
    try:
        with ThreadPoolExecutor(params.workers, thread_name_prefix="wbcv-infer") as pool:
            # measured in the pool, ahead of the sample's chunks (submitted before them, so a chunk
            # waiting on it never waits on a job that has not started)
            corrections: dict[int, Future[SampleCorrection]] = {}

            def correction_of(i: int) -> Future[SampleCorrection]:
                if i not in corrections:
                    corrections[i] = pool.submit(sample_correction, slides.samples[i], model, params.max_image_pixels)
                return corrections[i]

            jobs = (
                (
                    i,
                    last,
                    cells,
                    model,
                    params.max_image_pixels,
                    slides.samples[i].fields.get("um_per_px"),
                    correction_of(i),
                )
                for i, last, cells in chunks(todo, params.chunk_size)
            )
            for chunk in _prefetched(pool, jobs, depth=2 * params.workers + 1, fn=_decode_and_classify):
                metas.extend(chunk.meta)
                if chunk.scores is not None:
                    scores.append(chunk.scores)
                bar.update(len(chunk.meta))
                if not chunk.is_last:
                    continue
                write_slide(slides, chunk.sample_index, metas, scores, model.model_id, work)
                note = corrections.pop(chunk.sample_index).result().note
                if note:
                    work.log(f"sample {slides.samples[chunk.sample_index].sample_id}: {note}")
                metas, scores = [], []
                slides_done += 1
                elapsed = time.perf_counter() - t_start
                bar.set_postfix_str(f"slides {slides_done}/{len(todo)} ({slides_done / elapsed:.1f}/s)")
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
