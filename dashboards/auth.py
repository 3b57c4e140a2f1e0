"""Who may open the dashboard: loopback only by default, HTTP basic auth on anything wider.

Credentials come from the environment variable ``WBCV_DASHBOARD_AUTH`` (``user:password``) or
from a file (``--auth-file``, one ``user:password`` line; the file wins when both are given). On
a non-loopback host the dashboard refuses to start without credentials unless the user says
``--insecure``: run records name patients' samples, and a dashboard bound to 0.0.0.0 by mistake
would show them to the whole network. Basic auth sends the password with every request, so
beyond a trusted network it belongs behind a TLS-terminating proxy (the README says so).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from flask import Flask, Response, request

from wbcv.base.errors import WbcvError

AUTH_ENV: Final[str] = "WBCV_DASHBOARD_AUTH"
REALM: Final[str] = "wbcv dashboard"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never print the password in a traceback or log
        return f"Credentials(user={self.user!r}, password=***)"


def parse_credentials(text: str, source: str) -> Credentials:
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise WbcvError(f"{source}: expected 'user:password' with both parts non-empty")
    return Credentials(user, password)


def load_credentials(auth_file: Path | None, environ: dict[str, str] | None = None) -> Credentials | None:
    env = os.environ if environ is None else environ
    if auth_file is not None:
        try:
            text = Path(auth_file).read_text(encoding="utf-8")
        except OSError as e:
            raise WbcvError(f"{auth_file}: cannot read the credentials file: {e.strerror}") from None
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if len(lines) != 1:
            raise WbcvError(f"{auth_file}: expected exactly one 'user:password' line, found {len(lines)}")
        return parse_credentials(lines[0], str(auth_file))
    if env.get(AUTH_ENV):
        return parse_credentials(env[AUTH_ENV], f"environment variable {AUTH_ENV}")
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface


def check_exposure(host: str, credentials: Credentials | None, insecure: bool) -> None:
    """Refuse a non-loopback bind without credentials, unless the user accepted that explicitly."""
    if is_loopback(host) or credentials is not None or insecure:
        return
    raise WbcvError(
        f"refusing to listen on {host} without authentication: anyone who can reach this machine could read "
        f"the runs. Set {AUTH_ENV}=user:password or give --auth-file FILE (one 'user:password' line), "
        "or pass --insecure to do it anyway"
    )


def require_basic_auth(server: Flask, credentials: Credentials) -> None:
    """Every route of the server (pages, callbacks, cell images, assets) asks for the credentials."""
    user, password = credentials.user.encode(), credentials.password.encode()

    @server.before_request
    def _check() -> Response | None:
        auth = request.authorization
        if (
            auth is not None
            and auth.type == "basic"
            and hmac.compare_digest((auth.username or "").encode(), user)
            and hmac.compare_digest((auth.password or "").encode(), password)
        ):
            return None
        return Response(
            "authentication required\n", 401, {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        )
