"""The Ray engine: the local engine's batch run, scaled out over a Ray cluster with Ray Data.

Same run, other executor. ``run_inference_ray`` goes through ``wbcv.inference.runner.execute_run``
like the local engine (same run key, working directory, part files, resumption, sealing, tables
and run record); only the step that turns the unfinished slides into part files differs:

* the slides are cut by ``wbcv.inference.runner.chunks`` into the same chunks as in the local engine
  and become a Ray dataset of chunks, one row (and one block) each;
* ``Map(_decode_row)`` reads, hashes and decodes each chunk in a Ray task with the local engine's
  ``decode_chunk``; a file missing or unreadable on the worker is recorded as a skipped cell with
  the same reason as in the local engine;
* ``MapBatches(ChunkClassifier)`` classifies each chunk in an actor pool, one chunk per call, so
  each chunk is one forward pass of the same shape as in the local engine with the same torch
  thread count: the scores are the same bits. Each actor holds one copy of the model (shipped
  from the driver, so workers need no model files); with ``gpus_per_actor`` it runs the network
  on a GPU (combination stays on the CPU; GPU arithmetic is not bit-identical to the CPU's, so the
  device is part of the run key);
* the driver collects the chunks as they stream back, in any order, and writes a slide's part
  file as soon as all its chunks are in.

Faults: actors are restarted (``max_restarts``) and a call that was running on an actor that died
is retried on its replacement (``max_task_retries``); decode tasks are retried by Ray Data. Every
chunk is keyed by (slide, chunk), so a retried chunk can neither be lost nor counted twice; a
chunk that arrives twice or never is an error, not a silent difference.

Workers read the images by the batch's absolute path, so on a multi-node cluster the batch must
be mounted at the same path on every node (shared file system). ``ray`` is imported only here,
lazily; without it the engine raises a ``WbcvError`` that says how to install it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import numpy as np
import torch
from tqdm import tqdm

from wbcv.base.errors import WbcvError
from wbcv.base.runstore import WorkingRun
from wbcv.inference.acquisition import SampleCorrection
from wbcv.inference.artifact import InputSpec, LoadedModel
from wbcv.inference.runner import (
    InferenceParams,
    InferenceResult,
    chunks,
    classify,
    decode_chunk,
    execute_run,
    no_cell_mask,
    sample_correction,
    write_slide,
)
from wbcv.inference.slideset import CellEntry, Sample, SlideSet

INSTALL_HINT: Final[str] = "pip install 'wbcv[ray]' (in a checkout: .venv/bin/pip install -e '.[ray]')"
#: Column prefix of the score arrays of a classified chunk (the keys of ``wbcv.inference.runner.classify``).
_SCORE_PREFIX: Final[str] = "score_"


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray engine runs; recorded in run.json under ``engine``."""

    address: str | None = None  # None: start a local Ray instance; "auto", "HOST:PORT" or "ray://HOST:10001"
    actors: int | None = None  # classifier actors; default: see _default_actors
    gpus_per_actor: float = 0.0  # > 0: classifier actors run the network on a GPU
    max_restarts: int = 3  # per actor; bounded so that a chunk that always kills its actor ends the run

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise WbcvError(f"the number of Ray actors must be at least 1, got {self.actors}")
        if self.gpus_per_actor < 0:
            raise WbcvError(f"GPUs per actor must be 0 or more, got {self.gpus_per_actor}")


def import_ray() -> ModuleType:
    """``ray`` with Ray Data, or a WbcvError that says how to install it."""
    try:
        import pyarrow  # noqa: F401 - Ray core without the data extra lacks it
        import ray
        import ray.data
    except ImportError as e:
        raise WbcvError(f"--engine ray needs Ray Data, which is not installed ({e}); {INSTALL_HINT}") from None
    return ray


@contextmanager
def _connected(ray: ModuleType, address: str | None) -> Iterator[dict[str, Any]]:
    """Connect to (or start) Ray; leave a connection made by the caller open, close our own."""
    ours = not ray.is_initialized()
    if ours:
        try:
            # "local" rather than None: never attach silently to a cluster found through RAY_ADDRESS
            # or an earlier `ray start`; that is what --address auto is for.
            ray.init(address=address or "local", logging_level=logging.WARNING, include_dashboard=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise WbcvError(
                f"cannot connect to the Ray cluster at {address!r}: {e}; expected 'auto' (the cluster of "
                "RAY_ADDRESS or `ray start`), HOST:PORT of a head node, or ray://HOST:10001 (Ray Client)"
            ) from None
    try:
        resources = ray.cluster_resources()
        yield {
            "address": address or "local",
            "ray_version": ray.__version__,
            "cluster_cpus": resources.get("CPU", 0.0),
            "cluster_gpus": resources.get("GPU", 0.0),
        }
    finally:
        if ours:
            ray.shutdown()


def _default_actors(options: RayOptions, params: InferenceParams, cluster: dict[str, Any]) -> int:
    """GPU actors: one per ``gpus_per_actor`` of the cluster's GPUs. CPU actors: half the CPUs'
    worth, so that decode tasks keep the other half (all CPUs held by actors would starve them)."""
    if options.gpus_per_actor > 0:
        return max(1, int(cluster["cluster_gpus"] // options.gpus_per_actor))
    return max(1, int(cluster["cluster_cpus"] // (2 * params.threads_per_worker)))


def run_inference_ray(
    slides: SlideSet,
    model: LoadedModel,
    runs_dir: Path | str,
    params: InferenceParams | None = None,
    options: RayOptions | None = None,
    progress: bool = True,
    classifier: type[ChunkClassifier] | None = None,
) -> InferenceResult:
    """``wbcv.inference.runner.run_inference`` on Ray. ``classifier`` replaces the actor class (tests
    use it to kill an actor mid-batch)."""
    ray = import_ray()
    options = options or RayOptions()
    params = params or InferenceParams()
    if options.gpus_per_actor > 0:
        params = dataclasses.replace(params, device="cuda")
    with _connected(ray, options.address) as cluster:
        actors = options.actors or _default_actors(options, params, cluster)
        record = {"name": "ray", **cluster, "actors": actors, "gpus_per_actor": options.gpus_per_actor}

        engine = functools.partial(
            _process, ray=ray, options=options, actors=actors, classifier=classifier or ChunkClassifier
        )
        return execute_run(slides, model, runs_dir, params, progress, engine, record)


def _entry_json(entries: tuple[CellEntry, ...]) -> str:
    # JSON keeps the dataset's schema fixed (an all-null ``rejected`` column would infer another type).
    return json.dumps(
        [[e.rel_path, str(e.abs_path), e.size, e.mtime_ns, e.rejected, e.dev, e.ino, e.openable] for e in entries]
    )


def _decode_row(row: dict[str, Any], spec: InputSpec, max_pixels: int) -> dict[str, Any]:
    um = float(row["um_per_px"])
    um_per_px = um if um > 0 else None  # 0: not given (a column of one type across rows)
    entries = tuple(
        CellEntry(r, Path(a), s, m, rej, dev, ino, ok) for r, a, s, m, rej, dev, ino, ok in json.loads(row["entries"])
    )
    correction = SampleCorrection.from_dict(json.loads(row["correction"]))
    meta, pixels = decode_chunk(entries, spec, max_pixels, um_per_px, correction)
    size = spec.size
    return {
        "sample_index": row["sample_index"],
        "chunk_index": row["chunk_index"],
        "meta": json.dumps(meta),
        "pixels": pixels if pixels is not None else np.zeros((0, size, size, 3), np.uint8),
    }


class ChunkClassifier:
    """A classifier actor: one model, one chunk per call (batch_size=1), scores as columns."""

    def __init__(self, model: LoadedModel, threads: int, device: str) -> None:
        torch.set_num_threads(threads)  # the local engine's thread count: same reduction order, same bits
        if device != "cpu":
            model.net.to(device)
        self.model, self.device = model, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        pixels = np.array(batch["pixels"][0], dtype=np.uint8)  # a writable copy: torch refuses read-only memory
        no_cell = no_cell_mask(json.loads(str(batch["meta"][0])))
        scores = classify(self.model, pixels, self.device, no_cell) if len(pixels) else {}
        out: dict[str, Any] = {k: batch[k] for k in ("sample_index", "chunk_index", "meta")}
        out["n_scored"] = np.array([len(pixels)])
        for k, v in scores.items():
            out[_SCORE_PREFIX + k] = [v]
        return out


def _process(
    slides: SlideSet,
    model: LoadedModel,
    params: InferenceParams,
    work: WorkingRun,
    todo: list[tuple[int, Sample]],
    progress: bool,
    *,
    ray: ModuleType,
    options: RayOptions,
    actors: int,
    classifier: type[ChunkClassifier],
) -> None:
    if not todo:
        return
    items: list[dict[str, Any]] = []
    n_chunks: dict[int, int] = {}
    corrections = {i: json.dumps(sample_correction(s, model, params.max_image_pixels).to_dict()) for i, s in todo}
    for index, _last, cells in chunks(todo, params.chunk_size):
        n_chunks[index] = n_chunks.get(index, 0) + 1
        items.append(
            {
                "sample_index": index,
                "chunk_index": n_chunks[index] - 1,
                "entries": _entry_json(cells),
                "um_per_px": slides.samples[index].fields.get("um_per_px") or 0.0,
                "correction": corrections[index],
            }
        )

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar, ours, counting cells; and not the notice that says so:
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    decoded = ray.data.from_items(items, override_num_blocks=len(items)).map(
        _decode_row,
        fn_kwargs={"spec": model.input, "max_pixels": params.max_image_pixels},
    )
    with warnings.catch_warnings():
        # Ray Data takes max_restarts / max_task_retries only as extra remote args, deprecated since
        # 2.60 (to go in 2.64, hence the upper bound of the extra) without a replacement; its
        # default, unbounded restarts and retries, would retry a chunk that always kills its actor forever.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = decoded.map_batches(
            classifier,
            fn_constructor_kwargs={"model": model, "threads": params.threads_per_worker, "device": params.device},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=params.threads_per_worker,
            num_gpus=options.gpus_per_actor or None,
            max_restarts=options.max_restarts,
            max_task_retries=options.max_restarts,
        )
    total = sum(len(s.cells) for _, s in todo)
    bar = tqdm(total=total, unit="cell", desc="classifying (ray)", disable=not progress, dynamic_ncols=True)
    arrived: dict[int, dict[int, tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]]] = {}
    written: set[int] = set()
    try:
        for row in ds.iter_rows():
            index, chunk = int(row["sample_index"]), int(row["chunk_index"])
            slide = arrived.setdefault(index, {})
            if index in written or chunk in slide:
                raise RuntimeError(f"Ray returned chunk {chunk} of slide {index} twice")
            meta = json.loads(row["meta"])
            scores = {k[len(_SCORE_PREFIX) :]: np.asarray(v) for k, v in row.items() if k.startswith(_SCORE_PREFIX)}
            slide[chunk] = (meta, scores if int(row["n_scored"]) else None)
            bar.update(len(meta))
            if len(slide) < n_chunks[index]:
                continue
            parts = [slide[j] for j in range(n_chunks[index])]
            metas = [m for ms, _ in parts for m in ms]
            write_slide(slides, index, metas, [s for _, s in parts if s is not None], model.model_id, work)
            written.add(index)
            del arrived[index]
    finally:
        bar.close()
    missing = sorted(set(n_chunks) - written)
    if missing:
        raise RuntimeError(f"Ray finished without returning every chunk of slides {missing[:10]}")
