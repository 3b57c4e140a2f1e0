"""Who may open the dashboard: loopback only by default, HTTP basic auth on anything wider.

Credentials come from the environment variable ``WBCV_DASHBOARD_AUTH`` (``user:password``) or
from a file (``--auth-file``, one ``user:password`` line; the file wins when both are given). On
a non-loopback host the dashboard refuses to start without credentials unless the user says
``--insecure``: run records name patients' samples, and a dashboard bound to 0.0.0.0 by mistake
would show them to the whole network. Basic auth sends the password with every request, so
beyond a trusted network it belongs behind a TLS-terminating proxy (the README says so).

A leading UTF-8 byte-order mark in the file is dropped; a user name with a control or invisible
format character (zero-width space, bidi marks, a BOM elsewhere) is refused, naming the line.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import unicodedata
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


def _invisible(ch: str) -> bool:
    """Control, format (zero-width, BOM, bidi), private-use, unassigned or line/paragraph separators."""
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def parse_credentials(text: str, source: str) -> Credentials:
    """``user:password``; a user name holding an invisible or control character is refused, naming
    it, since nobody could type the name that would then be required (a BOM saved by an editor)."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise WbcvError(f"{source}: expected 'user:password' with both parts non-empty")
    bad = next(((i, ch) for i, ch in enumerate(user) if _invisible(ch)), None)
    if bad is not None:
        i, ch = bad
        raise WbcvError(
            f"{source}: the user name holds an invisible or control character U+{ord(ch):04X} "
            f"({unicodedata.name(ch, 'unnamed')}) at position {i + 1}; expected a name that can be typed"
        )
    return Credentials(user, password)


def load_credentials(auth_file: Path | None, environ: dict[str, str] | None = None) -> Credentials | None:
    env = os.environ if environ is None else environ
    if auth_file is not None:
        try:
            # utf-8-sig: a byte-order mark (Notepad writes one) is not part of the user name
            text = Path(auth_file).read_bytes().decode("utf-8-sig")
        except OSError as e:
            raise WbcvError(f"{auth_file}: cannot read the credentials file: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise WbcvError(f"{auth_file}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        lines = [
            (n, ln) for n, ln in enumerate(text.split("\n"), start=1) if ln.strip() and not ln.lstrip().startswith("#")
        ]
        if len(lines) != 1:
            raise WbcvError(f"{auth_file}: expected exactly one 'user:password' line, found {len(lines)}")
        n, line = lines[0]
        return parse_credentials(line, f"{auth_file} line {n}")
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
