"""What the dashboard's page asks the browser for (wbcv.dashboards.page.LeanDash), checked on what the server writes.

LeanDash rewrites the page Dash writes and overrides how Dash answers the layout request; these
tests fail, without a browser, when Dash changes what they rely on (the browser tests then check
that the page works and loads only that: tests/test_dashboard_browser.py).
"""

from __future__ import annotations

import json
import re
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from wbcv.dashboards.app import create_app, samples_view
from wbcv.dashboards.page import (
    BABEL_POLYFILL_TAG,
    LAZY_LIBRARIES,
    LAZY_SCRIPTS_ID,
    UNUSED_SUITES,
    LeanDash,
    _suite_tag,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str, str]:
    """The app, the script tags Dash wrote for its page, and the page as served."""
    seen: dict[str, str] = {}
    rewrite = LeanDash.interpolate_index

    def spy(self: LeanDash, **kwargs: str) -> str:
        seen["scripts"] = kwargs["scripts"]
        return rewrite(self, **kwargs)

    monkeypatch.setattr(LeanDash, "interpolate_index", spy)
    app = create_app(tmp_path)
    page = app.server.test_client().get("/").get_data(as_text=True)
    return app, seen["scripts"], page


def test_what_the_page_leaves_out_is_what_dash_writes(written):
    _, dash_scripts, _ = written
    # each rewrite matches Dash's own tags: a Dash that writes them otherwise fails here
    assert BABEL_POLYFILL_TAG.search(dash_scripts), dash_scripts
    for suite in (*LAZY_LIBRARIES, *UNUSED_SUITES):
        assert _suite_tag(suite).search(dash_scripts), (suite, dash_scripts)


def test_page_loads_neither_the_polyfill_nor_the_grid_nor_the_data_table_and_lists_the_grids_code(written):
    app, _, page = written
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert any("/dash-renderer/" in s for s in scripts) and any("/dcc/" in s for s in scripts)
    assert not [s for s in scripts if "polyfill" in s or "dash_ag_grid" in s or "dash_table" in s], scripts
    listed = re.search(rf'<script id="{LAZY_SCRIPTS_ID}" type="application/json">(.*?)</script>', page)
    assert listed, page
    lazy = json.loads(listed[1])
    assert list(lazy) == ["dash_ag_grid"] and len(lazy["dash_ag_grid"]) == 1
    client = app.server.test_client()
    code = client.get(lazy["dash_ag_grid"][0])
    assert code.status_code == 200 and b"AgGrid" in code.data
    # the chunk that script loads from the same folder when the grid is drawn
    assert client.get(lazy["dash_ag_grid"][0].rsplit("/", 1)[0] + "/async-community.js").status_code == 200
    # the layout and callbacks are preloaded
    assert '<link rel="preload" href="/_dash-layout" as="fetch">' in page
    assert '<link rel="preload" href="/_dash-dependencies" as="fetch">' in page


def test_page_config_holds_no_copy_of_the_layout(written):
    # Dash writes a layout to check callbacks against into every page unless callback exceptions are
    # suppressed; it would be the newest run's page, plot and all, built at start-up
    _, _, page = written
    config = json.loads(re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', page, re.S)[1])
    assert config["suppress_callback_exceptions"] is True and "validation_layout" not in config


def test_layout_request_is_answered_by_lean_dash(written):
    app, _, _ = written
    client = app.server.test_client()
    first, second = client.get("/_dash-layout"), client.get("/_dash-layout")
    assert first.status_code == 200 and first.data == second.data
    assert app._served is not None and app._served[1].encode() == first.data  # LeanDash.serve_layout wrote it


def test_installed_dash_is_the_major_version_page_py_is_written_for():
    # dashboards/page.py uses Dash internals (the index's script tags, serve_layout, dash._utils.to_json):
    # pyproject.toml bounds dash to the major version it was written for, and that is the one installed
    pyproject = (REPO / "pyproject.toml").read_text()
    spec = next(Requirement(r) for r in re.findall(r'"(dash[<>=!~][^"]*)"', pyproject))
    assert spec.name == "dash" and any(s.operator == "<" for s in spec.specifier), spec
    assert metadata.version("dash") in spec.specifier, (metadata.version("dash"), spec)


def test_the_page_uses_no_deprecated_dash_component(tmp_path: Path):
    # the sample table was a dash_table.DataTable, which Dash deprecates: an AG Grid now
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        app = create_app(tmp_path)
        assert app.server.test_client().get("/_dash-layout").status_code == 200
        samples_view()
