"""Serving cell images, only from inside the slide folders a run registered.

Route: ``/cells/<inference run id>/<cell path>``. A request is answered only when all of these hold:

1. the run id is that of an inference run linked (with a matching sha256) from a listed
   comparison run: the id selects a known run and is never joined to a path;
2. the cell path is, character for character, one of the ``cell_path`` values of that run's
   predictions (so ``..``, absolute paths and encoded separators never match a listed cell);
3. the file, with every symbolic link resolved, lies inside the resolved slide folder of the
   sample the cell belongs to, and that folder inside the resolved batch folder (a cell or a
   slide folder swapped for a link to elsewhere after the run is refused);
4. it is a regular file.

Anything else is a plain 404 that does not say which check failed, so the route cannot be used
to probe the file system.
"""

from __future__ import annotations

import io
import mimetypes
from pathlib import Path
from typing import Final
from urllib.parse import quote

from flask import Flask, Response, abort, send_file
from PIL import Image

from wbcv.dashboards.data import RunCatalog

ROUTE_PREFIX: Final[str] = "/cells"
#: Formats every browser shows as they are; other cell formats (TIFF, 16-bit PNG ...) are converted.
BROWSER_TYPES: Final[frozenset[str]] = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp"})


def cell_url(inference_run_id: str, cell_path: str) -> str:
    return f"{ROUTE_PREFIX}/{quote(inference_run_id, safe='')}/{quote(cell_path, safe='/')}"


def resolve_cell(catalog: RunCatalog, inference_run_id: str, cell_path: str) -> Path | None:
    """The file to serve for this request, or None when any check of the module docstring fails."""
    run = catalog.inference_for_cells(inference_run_id)
    if run is None:
        return None
    sample_id = run.cell_sample.get(cell_path)
    if sample_id is None:
        return None
    slide = run.slide_dirs.get(sample_id)
    if slide is None:
        return None
    try:
        batch_root = run.batch_root.resolve(strict=True)
        slide_root = slide.resolve(strict=True)
        target = (run.batch_root / cell_path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing file, or a symlink loop
        return None
    # the slide folder itself may have been swapped for a link to elsewhere: it must stay in the batch
    if not slide_root.is_relative_to(batch_root) or not target.is_relative_to(slide_root) or not target.is_file():
        return None
    return target


def _browser_image(path: Path) -> Response:
    mime = mimetypes.guess_type(path.name)[0]
    if mime in BROWSER_TYPES:
        return send_file(path, mimetype=mime, max_age=3600)
    try:
        with Image.open(path) as im:
            # 16-bit greyscale and other modes a PNG cannot hold for the browser: to 8-bit first
            img = im.convert("RGB") if im.mode not in ("RGB", "RGBA", "L") else im.copy()
    except (OSError, ValueError):
        abort(404)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    return send_file(buf, mimetype="image/png", max_age=3600)


def register_cell_route(server: Flask, catalog: RunCatalog) -> None:
    @server.get(f"{ROUTE_PREFIX}/<run_id>/<path:cell_path>")
    def cell_image(run_id: str, cell_path: str) -> Response:
        target = resolve_cell(catalog, run_id, cell_path)
        if target is None:
            abort(404)
        response = _browser_image(target)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # Anything else under the prefix (e.g. an empty segment, '/cells/RUN//etc/passwd', which the
    # rule above does not match) is a 404 too, rather than falling through to Dash's page route.
    @server.get(f"{ROUTE_PREFIX}/<path:anything>")
    @server.get(ROUTE_PREFIX)
    def not_a_cell(anything: str = "") -> Response:
        abort(404)
