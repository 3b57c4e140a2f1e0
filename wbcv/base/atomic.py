"""Writing files so that a reader, or a process killed with SIGKILL, sees all of a file or none.

Every writer goes to a temporary name in the same folder, flushes to disk and renames into place
(rename is atomic within one file system). Also the one content-hash function of the project.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from wbcv.base.errors import WbcvError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_parquet(path: Path, frame: pl.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Fixed compression and statistics so the same frame always gives the same bytes.
    frame.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verified_sidecar(folder: Path, card: dict[str, Any], key: str, default_name: str, what: str) -> Path | None:
    """The file that ``card[key]`` names beside the card (``file``, else ``default_name``), after
    checking its sha256 against ``card[key]["sha256"]``; None when the card has no such section.
    Raises WbcvError naming the file when the section is malformed, the file missing or changed."""
    entry = card.get(key)
    if not entry:
        return None
    if not isinstance(entry, dict):
        raise WbcvError(f"{folder}/model.json: {key!r} should be an object, got {type(entry).__name__}")
    path = folder / str(entry.get("file", default_name))
    if not path.is_file():
        raise WbcvError(f"{folder}: {what} file {path.name} named in the card is missing")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise WbcvError(
            f"{path}: sha256 {digest} does not match the model card's {key}.sha256 {entry.get('sha256')}; "
            "the file was modified"
        )
    return path
