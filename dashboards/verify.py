"""Recording a reviewer's verification of a cell: the one route of the dashboard that writes.

Route: ``POST /verify/<inference run id>`` with a JSON body ``{"cell_path": ..., "to": class or
null}`` (null accepts the cell's current class). The decision is appended to the run's
verification log (``wbcv.validation.verification_log``), beside the sealed run, never inside it.

Who may write: only a user the dashboard authenticated with HTTP basic auth (``auth.py``), on
loopback too. A dashboard started without credentials serves the page but refuses every write
(403): a record must name who made it. What else is refused, as in the image route: a run id that
is not the inference run of a listed comparison with an intact link (404), a cell that is not one
of that run's classified cells, an unknown class or a broken chain (400, the reason in the
answer). Cross-site requests: a body that is not ``application/json`` (415) or an ``Origin`` other
than the dashboard's own (403) is refused, so a page elsewhere cannot make a signed-in browser
post a form here (basic auth credentials are sent with cross-site form posts).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from flask import Flask, Response, jsonify, request

from wbcv.base.errors import WbcvError
from wbcv.dashboards.auth import AUTH_ENV, Credentials
from wbcv.dashboards.data import RunCatalog
from wbcv.validation.verification_log import Decision, append_decision

ROUTE_PREFIX: Final[str] = "/verify"
MAX_BODY_BYTES: Final[int] = 8192
NO_SIGN_IN: Final[str] = (
    "refused: verification is recorded only under sign-in, and this dashboard was started without "
    f"credentials; start it with {AUTH_ENV}=user:password or --auth-file FILE"
)


def verify_url(inference_run_id: str) -> str:
    return f"{ROUTE_PREFIX}/{quote(inference_run_id, safe='')}"


def _refused(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _same_origin() -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin.rstrip("/") == request.host_url.rstrip("/")


def register_verify_route(server: Flask, catalog: RunCatalog, credentials: Credentials | None) -> None:
    @server.post(f"{ROUTE_PREFIX}/<run_id>")
    def verify_cell(run_id: str) -> tuple[Response, int]:
        if credentials is None:
            return _refused(403, NO_SIGN_IN)
        auth = request.authorization  # require_basic_auth has checked it before this runs
        if auth is None or not auth.username:
            return _refused(401, "authentication required")
        if not _same_origin():
            return _refused(403, "refused: a request from another site")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _refused(413, f"refused: a body over {MAX_BODY_BYTES} bytes")
        if not request.is_json:
            return _refused(415, "refused: expected a JSON body (Content-Type: application/json)")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("cell_path"), str):
            return _refused(400, 'expected {"cell_path": "...", "to": class or null}')
        to = body.get("to")
        if to is not None and not isinstance(to, str):
            return _refused(400, "expected 'to' to be a class name or null (accept)")
        run = catalog.inference_for_cells(run_id)
        if run is None:
            return _refused(404, "no such inference run among the listed comparisons")
        try:
            entry = append_decision(run.path, run.predictions, Decision(auth.username, body["cell_path"], to))
        except WbcvError as e:
            return _refused(400, str(e))
        except OSError as e:  # a read-only or full runs folder: nothing was recorded
            return _refused(503, f"not recorded: cannot write the verification log beside run {run_id}: {e.strerror}")
        return jsonify(entry), 200
