"""The dashboard's safety defaults: the cell-image route serves nothing outside the registered slide
folders, and the server will not listen beyond loopback without authentication.

Traversal attempts go to a real server over a raw socket (``http.client`` sends the path as
written, without the normalisation a browser or test client would apply).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.dashboard_support import make_study_runs, serving
from wbcv.base.errors import WbcvError
from wbcv.dashboards import server as dashboard_server
from wbcv.dashboards.auth import Credentials, check_exposure, is_loopback, load_credentials
from wbcv.dashboards.data import RunCatalog
from wbcv.dashboards.server import WaitressServer, make_dashboard_server

SECRET = "TOP-SECRET-CONTENT-7f3a"


def make_runs(out: Path) -> tuple[Path, Path]:
    """A small study with its runs, and a secret file beside the batch (outside every slide folder)."""
    runs = make_study_runs(out, n_samples=4, cells_per_slide=10, untrained_model=False)
    (out / "secret.txt").write_text(SECRET)
    (out / "study" / "secret-in-batch.jpg").write_text(SECRET)  # inside the batch, in no slide folder
    return runs, out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_runs(tmp_path_factory.mktemp("dash-security"))


@pytest.fixture(scope="module")
def base(study: tuple[Path, Path]) -> Iterator[str]:
    with serving(study[0]) as url:
        yield url


def first_cell(runs: Path) -> tuple[str, str, str]:
    """(inference run id, sample id, cell path) of a listed cell."""
    catalog = RunCatalog(runs)
    inf = catalog.get(catalog.summaries()[0].run_id).inference
    assert inf is not None
    cell_path, sample_id = inf.predictions.select("cell_path", "sample_id").row(0)
    return inf.run_id, sample_id, cell_path


def raw_get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, http.client.HTTPMessage]:
    """Status, body and headers (looked up by name in any case, as HTTP says) of a GET sent as written."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), r.headers
    finally:
        conn.close()


def test_a_listed_cell_is_served_as_an_image(study, base):
    run_id, _, cell = first_cell(study[0])
    status, body, headers = raw_get(base, f"/cells/{run_id}/{cell}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert headers["X-Content-Type-Options"] == "nosniff"


ATTACKS = [
    "/cells/{run}/../../secret.txt",
    "/cells/{run}/{sample}/../../../secret.txt",
    "/cells/{run}/..%2f..%2fsecret.txt",
    "/cells/{run}/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/cells/{run}/%2e%2e/%2e%2e/secret.txt",
    "/cells/{run}/{sample}%2f..%2f..%2f..%2fsecret.txt",
    "/cells/{run}/..%5c..%5csecret.txt",
    "/cells/{run}/%252e%252e%252fsecret.txt",
    "/cells/{run}/secret-in-batch.jpg",
    "/cells/{run}/{sample}/../secret-in-batch.jpg",
    "/cells/{run}/{secret_abs}",
    "/cells/{run}//{secret_abs}",
    "/cells/{run}/%2f{secret_abs_enc}",
    "/cells/{run}/{cell_abs}",
    "/cells/{run}/{cell}%00.png",
    "/cells/..%2f..%2f{study_name}/secret.txt",
    "/cells/%2e%2e/secret.txt",
    "/cells/no-such-run/{cell}",
]


@pytest.mark.parametrize("template", ATTACKS)
def test_traversal_outside_the_slide_folders_is_refused(study, base, template):
    runs, root = study
    run_id, sample_id, cell = first_cell(runs)
    secret_abs = str((root / "secret.txt").resolve()).lstrip("/")
    path = template.format(
        run=run_id,
        sample=sample_id,
        cell=cell,
        secret_abs=secret_abs,
        secret_abs_enc=secret_abs.replace("/", "%2f"),
        cell_abs=str((root / "study" / cell).resolve()).lstrip("/"),
        study_name=root.name,
    )
    status, body, _ = raw_get(base, path)
    assert status in (400, 404), (path, status)
    assert SECRET.encode() not in body


@pytest.fixture
def fresh_study(tmp_path: Path) -> tuple[Path, Path]:
    """Its own study, for tests that tamper with files after the run."""
    return make_runs(tmp_path)


def test_a_cell_swapped_for_a_symlink_leading_outside_is_refused(fresh_study):
    runs, root = fresh_study
    run_id, sample_id, _ = first_cell(runs)
    catalog = RunCatalog(runs)
    inf = catalog.get(catalog.summaries()[0].run_id).inference
    cells = inf.predictions.filter(inf.predictions["sample_id"] == sample_id)["cell_path"].to_list()
    outside, in_batch, other_slide, same_slide = cells[0], cells[1], cells[2], cells[3]
    other_sample_cell = inf.predictions.filter(inf.predictions["sample_id"] != sample_id)["cell_path"][0]
    batch = root / "study"
    links = {
        outside: root / "secret.txt",  # outside the batch
        in_batch: batch / "secret-in-batch.jpg",  # inside the batch, outside every slide folder
        other_slide: batch / other_sample_cell,  # another sample's slide folder
        same_slide: batch / cells[4],  # same slide: allowed, the target is inside the slide folder
    }
    for rel, target in links.items():
        (batch / rel).unlink()
        (batch / rel).symlink_to(target)
    with serving(runs) as base:
        results = {rel: raw_get(base, f"/cells/{run_id}/{rel}") for rel in links}
    for rel in (outside, in_batch, other_slide):
        assert results[rel][0] == 404 and SECRET.encode() not in results[rel][1], rel
    assert results[same_slide][0] == 200


def test_a_slide_folder_replaced_by_a_symlink_to_elsewhere_is_refused(fresh_study):
    runs, root = fresh_study
    run_id, sample_id, cell = first_cell(runs)
    slide = root / "study" / sample_id
    elsewhere = root / "elsewhere"
    shutil.copytree(slide, elsewhere)  # same file names, outside the batch
    shutil.rmtree(slide)
    slide.symlink_to(elsewhere, target_is_directory=True)
    with serving(runs) as base:
        status, _, _ = raw_get(base, f"/cells/{run_id}/{cell}")
    assert status == 404


def test_an_altered_inference_record_cannot_widen_what_is_served(fresh_study):
    runs, _ = fresh_study
    run_id, _, cell = first_cell(runs)
    inf_dir = runs / run_id
    record = inf_dir / "run.json"
    doc = json.loads(record.read_text())
    doc["batch"]["path"] = "/"
    inf_dir.chmod(stat.S_IRWXU)
    record.chmod(stat.S_IRUSR | stat.S_IWUSR)
    record.write_text(json.dumps(doc))
    catalog = RunCatalog(runs)
    run = catalog.get(catalog.summaries()[0].run_id)
    assert run.inference is None and "does not match the sha256" in run.notes[0]
    with serving(runs) as base:
        status, _, _ = raw_get(base, f"/cells/{run_id}/{cell}")
    assert status == 404


# --- who may connect ---


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_credentials(host):
    assert is_loopback(host)
    check_exposure(host, None, insecure=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org", "localhost.example.org"])
def test_other_hosts_refuse_to_start_without_credentials_unless_insecure(host):
    with pytest.raises(WbcvError, match=r"refusing to listen on .* without authentication"):
        check_exposure(host, None, insecure=False)
    check_exposure(host, Credentials("u", "p"), insecure=False)
    check_exposure(host, None, insecure=True)


def _cli(*args: str, env_auth: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WBCV_DASHBOARD_AUTH"}
    if env_auth is not None:
        env["WBCV_DASHBOARD_AUTH"] = env_auth
    return subprocess.run(
        [sys.executable, "-m", "wbcv.cli", "dashboard", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_cli_refuses_a_public_host_without_credentials(study):
    runs, _ = study
    r = _cli("--runs", str(runs), "--host", "0.0.0.0", "--port", str(_free_port()))
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in r.stderr and "WBCV_DASHBOARD_AUTH" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize(
    ("args", "env_auth", "message"),
    [
        (["--runs", "{missing}"], None, "runs folder does not exist"),
        (["--runs", "{runs}", "--host", "0.0.0.0"], "no-colon-here", "expected 'user:password'"),
        (["--runs", "{runs}", "--auth-file", "{missing}"], None, "cannot read the credentials file"),
    ],
)
def test_cli_input_errors_are_messages_not_tracebacks(study, tmp_path, args, env_auth, message):
    runs, _ = study
    argv = [a.format(missing=tmp_path / "nope", runs=runs) for a in args]
    r = _cli(*argv, "--port", str(_free_port()), env_auth=env_auth)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_credentials_file_and_environment(tmp_path):
    f = tmp_path / "auth"
    f.write_text("# reviewer account\nqa:s3cret:with:colons\n")
    assert load_credentials(f, {}) == Credentials("qa", "s3cret:with:colons")
    assert load_credentials(None, {"WBCV_DASHBOARD_AUTH": "a:b"}) == Credentials("a", "b")
    assert load_credentials(f, {"WBCV_DASHBOARD_AUTH": "a:b"}).user == "qa"  # the file wins
    assert load_credentials(None, {}) is None
    assert "s3cret" not in repr(load_credentials(f, {}))
    f.write_text("a:b\nc:d\n")
    with pytest.raises(WbcvError, match="exactly one"):
        load_credentials(f, {})
    with pytest.raises(WbcvError, match="both parts non-empty"):
        load_credentials(None, {"WBCV_DASHBOARD_AUTH": "user:"})


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_with_credentials_every_route_asks_for_them(study):
    runs, _ = study
    run_id, _, cell = first_cell(runs)
    with serving(runs, Credentials("qa", "pw")) as base:
        for path in ("/", "/_dash-layout", f"/cells/{run_id}/{cell}", "/assets/style.css"):
            status, _, headers = raw_get(base, path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic "), path
            assert raw_get(base, path, _basic("qa", "wrong"))[0] == 401
            assert raw_get(base, path, _basic("QA", "pw"))[0] == 401
            assert raw_get(base, path, _basic("qa", "pw"))[0] == 200, path


def test_cli_serves_a_public_host_with_credentials(study):
    runs, _ = study
    port = _free_port()
    env = {**os.environ, "WBCV_DASHBOARD_AUTH": "qa:pw"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wbcv.cli", "dashboard", "--runs", str(runs), "--host", "0.0.0.0", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert f"serving http://0.0.0.0:{port}/ (basic auth as qa)" in line, line + proc.stderr.read()
        assert raw_get(f"http://127.0.0.1:{port}", "/")[0] == 401
        assert raw_get(f"http://127.0.0.1:{port}", "/", _basic("qa", "pw"))[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "[::]"])
def test_a_public_host_is_served_by_waitress_and_asks_for_credentials(study, monkeypatch, host):
    # the server is asked for, not bound: tests listen on loopback only
    asked: dict[str, object] = {}

    class Bound:
        effective_port = 8050

    def create_server(app, **kw):
        asked.update(kw, app=app)
        return Bound()

    monkeypatch.setattr(dashboard_server, "create_server", create_server)
    runs, _ = study
    server = make_dashboard_server(runs, host, 8050, Credentials("qa", "pw"))
    assert isinstance(server, WaitressServer) and server.server_port == 8050
    assert asked["host"] == host.strip("[]") and asked["port"] == 8050 and asked["threads"] == dashboard_server.THREADS
    client = asked["app"].test_client()  # the Flask app waitress would serve
    assert client.get("/").status_code == 401
    assert client.get("/", headers=_basic("qa", "pw")).status_code == 200
    with pytest.raises(WbcvError, match="refusing to listen"):
        make_dashboard_server(runs, host, 8050, None)


def test_loopback_is_served_by_waitress_too_which_stops_on_shutdown(study):
    runs, _ = study
    server = make_dashboard_server(runs, "127.0.0.1", 0, None)
    assert isinstance(server, WaitressServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    status, _, headers = raw_get(base, "/")
    assert status == 200 and "Werkzeug" not in headers.get("Server", "")
    # an idle keep-alive connection does not keep it serving
    idle = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    idle.request("GET", "/_dash-layout")
    assert idle.getresponse().read()
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive()
    server.server_close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.server_port), timeout=2):
        pass
    idle.close()


def test_a_port_in_use_is_a_message(study):
    runs, _ = study
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(WbcvError, match=r"cannot listen on 127\.0\.0\.1:\d+: .*choose another --port"):
            make_dashboard_server(runs, "127.0.0.1", taken.getsockname()[1], None)


def test_cli_serves_until_ctrl_c(study):
    runs, _ = study
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wbcv.cli", "dashboard", "--runs", str(runs), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "WBCV_DASHBOARD_AUTH"},
    )
    try:
        line = proc.stdout.readline()
        assert f"serving http://127.0.0.1:{port}/ (no authentication)" in line, line + proc.stderr.read()
        assert raw_get(f"http://127.0.0.1:{port}", "/")[0] == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "wbcv dashboard: stopped" in out and "Traceback" not in err, (out, err)
    finally:
        proc.kill()
        proc.wait(30)
