"""What produced a result: versions of wbcv and the libraries in its arithmetic, git commit, CPU."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


def cpu_name() -> str:
    """The processor model, for benchmark and training records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass(frozen=True, kw_only=True)
class Software:
    """The ``software`` section of a run record (``wbcv.base.records``) and of a report manifest."""

    wbcv: str | None
    git_commit: str | None
    git_dirty: bool | None  # uncommitted changes to tracked files
    python: str
    torch: str | None
    polars: str | None
    numpy: str | None
    pillow: str | None
    platform: str
    machine: str
    cpu: str | None = None  # recorded since 2026-11-25 (6c88d2f); None in runs written before


def software_info() -> Software:
    """Versions of wbcv and the libraries whose arithmetic is in the results, plus the git commit."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    repo = Path(__file__).resolve().parents[2]
    commit = dirty = None
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return Software(
        wbcv=version("wbcv"),
        git_commit=commit,
        git_dirty=dirty,
        python=platform.python_version(),
        torch=version("torch"),
        polars=version("polars"),
        numpy=version("numpy"),
        pillow=version("pillow"),
        platform=platform.platform(),
        machine=platform.machine(),
        cpu=cpu_name(),
    )
