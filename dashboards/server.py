"""Starting the dashboard's web server: the one place that binds a socket.

The dashboard is served by waitress, a production WSGI server (a fixed pool of worker threads
behind an asynchronous socket loop: slow or idle clients hold no thread, request headers and
bodies are bounded), on every host. Werkzeug's server, which Flask's ``app.run`` uses, is a
development server and says so; beyond loopback the dashboard must not run on it. On loopback
waitress serves too: one server to test, and the one the tests and the benchmark drive is the one
a shared machine runs. It is not slower: a first load's 17 files (3.2 MB) came in 21 ms from
waitress against 31 ms from Werkzeug (medians of 30, six connections, as a browser opens), and
page loads (benchmarks/bench_dashboard.py) differed by less than their spread.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Final, Protocol

from waitress import wasyncore
from waitress.server import create_server
from waitress.trigger import trigger

from wbcv.base.errors import WbcvError
from wbcv.dashboards.app import create_app
from wbcv.dashboards.auth import Credentials, check_exposure

#: Worker threads of the server: a page load asks for about fifteen files and the layout at once,
#: the files take milliseconds, the layout and the callbacks hold the GIL most of their time anyway.
THREADS: Final[int] = 8


class DashboardServer(Protocol):
    """A bound server: ``serve_forever`` until another thread calls ``shutdown``, then ``server_close``."""

    @property
    def server_port(self) -> int: ...

    def serve_forever(self) -> None: ...

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


class WaitressServer:
    """waitress bound to one host and port, with the start/stop interface of Python's socket servers."""

    def __init__(self, app: Any, host: str, port: int, threads: int = THREADS) -> None:
        self._map: dict[int, Any] = {}
        # ident: no "Server: waitress" header. Any: waitress's stubs lack effective_port and have
        # the trigger's thunks take an argument they are not given.
        self._server: Any = create_server(app, map=self._map, host=host, port=port, threads=threads, ident="")
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def server_port(self) -> int:
        """The port listened on (the one chosen when 0 was asked for)."""
        listening = getattr(self._server, "effective_listen", None)  # several addresses (localhost: ::1 and 127.0.0.1)
        return int(listening[0][1]) if listening else int(self._server.effective_port)

    def serve_forever(self) -> None:
        """Serve until ``shutdown`` (or Ctrl-C, which is raised here: waitress's own ``run`` swallows it)."""
        adj = self._server.adj
        self._stopped.clear()
        try:
            wasyncore.loop(timeout=adj.asyncore_loop_timeout, map=self._map, use_poll=adj.asyncore_use_poll)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Close the listening socket and every open connection from the server's own loop; wait for it."""
        wake: Any = next((d for d in list(self._map.values()) if isinstance(d, trigger)), None)
        if wake is None:
            return  # closed already
        wake.pull_trigger(lambda: wasyncore.close_all(self._map))
        self._stopped.wait(10)

    def server_close(self) -> None:
        wasyncore.close_all(self._map)
        self._server.task_dispatcher.shutdown()


def make_dashboard_server(
    runs_dir: Path, host: str, port: int, credentials: Credentials | None, insecure: bool = False
) -> DashboardServer:
    """The dashboard's WSGI server, bound but not yet serving (``serve_forever``).

    Port 0 picks a free port (tests); ``server.server_port`` tells which.
    """
    check_exposure(host, credentials, insecure)
    app = create_app(runs_dir, credentials)
    try:
        return WaitressServer(app.server, host.strip("[]"), port)
    except OSError as e:
        raise WbcvError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") from None
