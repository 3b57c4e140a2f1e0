"""The verification route (dashboards/verify.py) without a browser: who may write, what is refused."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from wbcv.dashboards.auth import Credentials, require_basic_auth
from wbcv.dashboards.verify import register_verify_route
from wbcv.validation.verification_log import check_log, log_path

USER = Credentials("ana", "pw-1")


@dataclass
class StubRun:
    path: Path
    predictions: pl.DataFrame


class StubCatalog:
    """What the route asks of wbcv.dashboards.data.RunCatalog: the inference run of a listed comparison."""

    def __init__(self, run: StubRun) -> None:
        self.run = run

    def inference_for_cells(self, run_id: str) -> StubRun | None:
        return self.run if run_id == self.run.path.name else None


@pytest.fixture
def run(tmp_path: Path) -> StubRun:
    path = tmp_path / "runs" / "infer-1"
    path.mkdir(parents=True)
    (path / "run.json").write_text("{}")
    predictions = pl.DataFrame(
        {
            "sample_id": ["s1", "s1"],
            "cell_path": ["s1/a.jpg", "s1/b.jpg"],
            "sha256": ["aa" * 32, "bb" * 32],
            "predicted_class": ["neutrophil", "monocyte"],
            "unclassified": [False, True],
        }
    )
    return StubRun(path, predictions)


def client(run: StubRun, credentials: Credentials | None) -> FlaskClient:
    app = Flask("test")
    if credentials is not None:
        require_basic_auth(app, credentials)
    register_verify_route(app, StubCatalog(run), credentials)  # type: ignore[arg-type]
    return app.test_client()


def auth(user: str = USER.user, password: str = USER.password) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def post(c: FlaskClient, run_id: str, body: object, **headers: str) -> TestResponse:
    data = body if isinstance(body, str) else json.dumps(body)
    return c.post(f"/verify/{run_id}", data=data, headers={"Content-Type": "application/json", **headers})


def test_a_signed_in_user_records_a_decision(run: StubRun):
    c = client(run, USER)
    r = post(c, "infer-1", {"cell_path": "s1/b.jpg", "to": None}, **auth())
    assert r.status_code == 200, r.json
    assert (r.json["user"], r.json["from"], r.json["to"], r.json["action"]) == (
        "ana",
        "unclassified",
        "unclassified",
        "accept",
    )
    r = post(c, "infer-1", {"cell_path": "s1/b.jpg", "to": "not_wbc"}, **auth())
    assert (r.json["from"], r.json["to"], r.json["seq"]) == ("unclassified", "not_wbc", 2)
    assert check_log(run.path).intact


def test_no_credentials_configured_refuses_every_write_even_on_loopback(run: StubRun):
    r = post(client(run, None), "infer-1", {"cell_path": "s1/a.jpg", "to": "basophil"})
    assert r.status_code == 403 and "recorded only under sign-in" in r.json["error"]
    assert not log_path(run.path).exists()


def test_wrong_or_missing_credentials_are_401(run: StubRun):
    c = client(run, USER)
    assert post(c, "infer-1", {"cell_path": "s1/a.jpg", "to": "basophil"}).status_code == 401
    assert post(c, "infer-1", {"cell_path": "s1/a.jpg", "to": "basophil"}, **auth(password="nope")).status_code == 401
    assert not log_path(run.path).exists()


@pytest.mark.parametrize(
    ("run_id", "body", "headers", "status", "says"),
    [
        ("infer-1", {"cell_path": "s1/a.jpg", "to": "blast"}, {}, 400, "expected one of neutrophil"),
        ("infer-1", {"cell_path": "../x.jpg", "to": "basophil"}, {}, 400, "not a classified cell"),
        ("infer-1", {"cell_path": "s1/a.jpg", "to": 3}, {}, 400, "class name or null"),
        ("infer-1", ["s1/a.jpg"], {}, 400, "expected {"),
        ("infer-2", {"cell_path": "s1/a.jpg", "to": "basophil"}, {}, 404, "no such inference run"),
        ("infer-1", {"cell_path": "s1/a.jpg"}, {"Origin": "http://evil.example"}, 403, "another site"),
        ("infer-1", "x" * 9000, {}, 413, "over 8192 bytes"),
    ],
)
def test_refusals_name_the_reason_and_record_nothing(run: StubRun, run_id, body, headers, status, says):
    r = post(client(run, USER), run_id, body, **auth(), **headers)
    assert r.status_code == status and says in r.json["error"]
    assert not log_path(run.path).exists()


def test_a_form_post_is_refused(run: StubRun):
    r = client(run, USER).post("/verify/infer-1", data={"cell_path": "s1/a.jpg"}, headers=auth())
    assert r.status_code == 415 and not log_path(run.path).exists()


def test_nothing_is_appended_to_a_broken_chain(run: StubRun):
    c = client(run, USER)
    for to in ("basophil", "eosinophil"):
        assert post(c, "infer-1", {"cell_path": "s1/a.jpg", "to": to}, **auth()).status_code == 200
    lines = log_path(run.path).read_bytes().splitlines(keepends=True)
    log_path(run.path).write_bytes(lines[0].replace(b"basophil", b"monocyte") + lines[1])
    r = post(c, "infer-1", {"cell_path": "s1/a.jpg", "to": "lymphocyte"}, **auth())
    assert r.status_code == 400 and "not intact" in r.json["error"] and "line 1" in r.json["error"]
    assert len(log_path(run.path).read_bytes().splitlines()) == 2
