"""Starting the dashboard's web server: the one place that binds a socket."""

from __future__ import annotations

from pathlib import Path

from werkzeug.serving import BaseWSGIServer, make_server

from wbcv.base.errors import WbcvError
from wbcv.dashboards.app import create_app
from wbcv.dashboards.auth import Credentials, check_exposure


def make_dashboard_server(
    runs_dir: Path, host: str, port: int, credentials: Credentials | None, insecure: bool = False
) -> BaseWSGIServer:
    """A threaded WSGI server for the dashboard, bound but not yet serving (``serve_forever``).

    Port 0 picks a free port (tests); ``server.server_port`` tells which.
    """
    check_exposure(host, credentials, insecure)
    app = create_app(runs_dir, credentials)
    try:
        return make_server(host, port, app.server, threaded=True)
    except OSError as e:
        raise WbcvError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") from None
