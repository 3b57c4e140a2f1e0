"""The dashboard's partial plotly.js bundle (dashboards/assets/plotly-wbcv.min.js) against what it must draw.

dcc.Graph uses the bundle instead of plotly.js's full one; a trace type missing from it would
draw nothing in the browser, and a plotly.js other than the one the Python package targets could
read figures differently. The browser tests draw every view with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import plotly.graph_objects as go
from plotly.basedatatypes import BaseTraceType
from plotly.offline import get_plotlyjs_version

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "dashboards" / "assets" / "plotly-wbcv.min.js"
BUILD = REPO / "dashboards" / "plotly_bundle"
RUNTIME = REPO / "dashboards" / "assets" / "regenerator-runtime.min.js"
# what build.sh writes as the bundles' first lines
BANNER = re.compile(r"/\*! plotly\.js v(?P<version>[\w.-]+) .*traces: (?P<traces>[\w, ]+);")
RUNTIME_BANNER = re.compile(r"/\*! regenerator-runtime v(?P<version>[\w.-]+) ")


def banner() -> re.Match[str]:
    with BUNDLE.open(encoding="utf-8") as f:
        m = BANNER.match(f.readline())
    assert m, f"{BUNDLE.name} has no banner of dashboards/plotly_bundle/build.sh"
    return m


def test_bundle_is_the_plotly_js_version_of_the_python_package():
    assert banner()["version"] == get_plotlyjs_version(), "rebuild it: dashboards/plotly_bundle/build.sh"
    package = json.loads((BUILD / "package.json").read_text())
    lock = json.loads((BUILD / "package-lock.json").read_text())
    assert package["dependencies"]["plotly.js"] == get_plotlyjs_version()
    assert lock["packages"]["node_modules/plotly.js"]["version"] == get_plotlyjs_version()


def test_bundle_has_every_trace_type_the_dashboard_builds():
    used = set()
    for source in ("validation/figures.py", "dashboards/app.py"):
        for name in re.findall(r"\bgo\.([A-Z]\w*)", (REPO / source).read_text()):
            cls = getattr(go, name)
            if isinstance(cls, type) and issubclass(cls, BaseTraceType):
                used.add(cls().plotly_name)
    assert used >= {"scatter", "scattergl", "heatmap"}  # the search itself works
    bundled = {t.strip() for t in banner()["traces"].split(",")}
    assert used <= bundled, f"add {sorted(used - bundled)} to dashboards/plotly_bundle (entry.js, build.sh)"
    entry = (BUILD / "entry.js").read_text()
    assert {t for t in bundled if t != "scatter"} == set(re.findall(r"plotly\.js/lib/(\w+)'\)", entry)) - {"core"}


def test_regenerator_runtime_is_the_locked_version_and_sets_the_global():
    # Dash's lazy loader calls the global regeneratorRuntime, which @babel/polyfill used to set
    # (wbcv.dashboards.app.LeanDash leaves the polyfill out; the browser tests load the page without it)
    with RUNTIME.open(encoding="utf-8") as f:
        m = RUNTIME_BANNER.match(f.readline())
        code = f.read()
    assert m, f"{RUNTIME.name} has no banner of dashboards/plotly_bundle/build.sh"
    package = json.loads((BUILD / "package.json").read_text())
    lock = json.loads((BUILD / "package-lock.json").read_text())
    assert m["version"] == package["dependencies"]["regenerator-runtime"]
    assert m["version"] == lock["packages"]["node_modules/regenerator-runtime"]["version"]
    assert "regeneratorRuntime=runtime" in code


def test_plotly_stylesheet_is_the_one_of_the_bundled_plotly_js():
    # the dashboard tells plotly.js not to insert its style rules (wbcv.dashboards.app.LeanDash): the
    # stylesheet must be the one made for the bundled version
    css = REPO / "dashboards" / "assets" / "plotly.css"
    with css.open(encoding="utf-8") as f:
        first = f.readline()
        rules = f.read()
    assert first.startswith(f"/*! plotly.js v{banner()['version']} ") and "dist/plotly.css" in first
    assert ".js-plotly-plot .plotly .main-svg{position:absolute" in rules
