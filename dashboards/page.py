"""How the dashboard's page loads fast: what its HTML asks for, and the page built once per listing.

The first load is measured by benchmarks/bench_dashboard.py; on a machine without a GPU most of it
is plotly.js drawing the WebGL plot, the rest is Dash starting. Nothing here changes what the page
shows or does (tests/test_dashboard_browser.py).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any, Final

from dash import Dash
from dash._utils import to_json
from dash.development.base_component import Component

from wbcv.dashboards.data import RunCatalog, RunSummary

#: Dash's script tag for @babel/polyfill (core-js 2 and regenerator-runtime for old browsers).
BABEL_POLYFILL_TAG: Final[re.Pattern[str]] = re.compile(r'<script src="[^"]*/polyfill@[^"]*"></script>\n?')


#: The code of dcc.Graph, which dcc loads only when the page draws its first graph.
LAZY_CHUNKS: Final[tuple[str, ...]] = ("_dash-component-suites/dash/dcc/async-graph.js",)


#: Component libraries whose code the page does not load: the first view that shows one of their
#: components loads it (``load_library_js``). dash-ag-grid's main script is 1.3 MB (AG Grid
#: itself), and only the samples tab uses it.
LAZY_LIBRARIES: Final[tuple[str, ...]] = ("dash_ag_grid",)
#: The page element that lists the left-out libraries' script URLs: ``{namespace: [url, ...]}``.
LAZY_SCRIPTS_ID: Final[str] = "wbcv-lazy-scripts"
#: Component libraries Dash puts in every page that the dashboard does not use: dash_table
#: (deprecated; Dash registers it whenever it is imported).
UNUSED_SUITES: Final[tuple[str, ...]] = ("dash/dash_table",)


def _suite_tag(suite: str) -> re.Pattern[str]:
    """Dash's script tags for a component library's code, served from _dash-component-suites/<suite>/."""
    return re.compile(rf'<script src="(?P<src>[^"]*/_dash-component-suites/{re.escape(suite)}/[^"]*)"></script>\n?')


def load_library_js(namespace: str, tab: str) -> str:
    """A clientside callback (view, loaded) -> true: loads a left-out library once its tab is open.

    The callback that builds the tab's components waits for it: Dash's renderer looks a component's
    code up in ``window[namespace]`` when it draws it. Loaded once per page, whatever the clicks.
    """
    return f"""async function (view, loaded) {{
    if (view !== {json.dumps(tab)} || loaded) {{ return window.dash_clientside.no_update; }}
    const ns = {json.dumps(namespace)};
    const loading = (window.wbcvLibraries = window.wbcvLibraries || {{}});
    if (!loading[ns]) {{
        const urls = JSON.parse(document.getElementById({json.dumps(LAZY_SCRIPTS_ID)}).textContent)[ns] || [];
        loading[ns] = urls.reduce((done, src) => done.then(() => new Promise((resolve, reject) => {{
            const script = document.createElement('script');
            script.src = src;
            script.onload = resolve;
            script.onerror = () => {{ delete loading[ns]; reject(new Error('cannot load ' + src)); }};
            document.head.appendChild(script);
        }})), Promise.resolve());
    }}
    await loading[ns];
    return true;
}}"""


#: Tells plotly.js not to insert its style rules one by one as it loads (about 0.1 s here);
#: they come from assets/plotly.css (plotly.js's dist/plotly.css, made for strict CSP pages).
PLOTLY_CSS_FROM_ASSETS: Final[str] = '<style id="plotly.js-style-global" class="no-inline-styles"></style>'


class LeanDash(Dash):
    """Dash with a faster first page load (benchmarks/bench_dashboard.py); the page works the same.

    * Dash's renderer asks for ``_dash-layout``, ``_dash-dependencies`` and dcc.Graph's code only
      after every script has been evaluated (about 0.8 s here): they are preloaded, so the server
      builds the layout, which holds the first verification plot (``PageMemo``), meanwhile.
    * No @babel/polyfill (core-js 2 for old browsers, about 0.2 s): every browser Dash supports
      has what it adds; the one global Dash's code takes from it, ``regeneratorRuntime`` (its lazy
      loader is compiled for old browsers), comes from the 7 KB assets/regenerator-runtime.min.js.
    * plotly.js's style rules come from assets/plotly.css instead of being inserted one by one
      while plotly.js loads (``PLOTLY_CSS_FROM_ASSETS``, about 0.1 s).
    * The code of the component libraries in ``LAZY_LIBRARIES`` (AG Grid, 1.3 MB) is left out of
      the page; their script URLs are listed in the element ``LAZY_SCRIPTS_ID`` for
      ``load_library_js``, which loads them when the tab that needs them is opened. Libraries the
      dashboard does not use (``UNUSED_SUITES``) are left out altogether.

    The asset files are built by dashboards/plotly_bundle/build.sh.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served_lock = threading.Lock()
        self._served: tuple[object, str] | None = None

    def serve_layout(self) -> Any:
        """Dash's layout response, written out once per page object (``PageMemo`` keeps it while
        the listing of runs is unchanged): the newest run's plot makes it large (0.6 MB for
        10,000 samples), and writing it again on every page load held up the scripts' files."""
        layout = self.get_layout()
        with self._served_lock:
            if self._served is None or self._served[0] is not layout:
                self._served = (layout, to_json(layout))
            body = self._served[1]
        return self.backend.make_response(body, mimetype="application/json")

    def interpolate_index(
        self,
        metas: str = "",
        title: str = "",
        css: str = "",
        config: str = "",
        scripts: str = "",
        app_entry: str = "",
        favicon: str = "",
        renderer: str = "",
    ) -> str:
        prefix = self.config.requests_pathname_prefix
        preload = [
            f'<link rel="preload" href="{prefix}{e}" as="fetch">' for e in ("_dash-layout", "_dash-dependencies")
        ]
        preload += [f'<link rel="preload" href="{prefix}{chunk}" as="script">' for chunk in LAZY_CHUNKS]
        scripts = BABEL_POLYFILL_TAG.sub("", scripts)
        for suite in UNUSED_SUITES:
            scripts = _suite_tag(suite).sub("", scripts)
        lazy: dict[str, list[str]] = {}
        for namespace in LAZY_LIBRARIES:
            tag = _suite_tag(namespace)
            lazy[namespace] = [m["src"] for m in tag.finditer(scripts)]
            scripts = tag.sub("", scripts)
        # "</" cannot occur in the JSON of URLs that Dash wrote into src attributes
        scripts += f'<script id="{LAZY_SCRIPTS_ID}" type="application/json">{json.dumps(lazy)}</script>'
        return str(
            super().interpolate_index(
                metas="".join(preload) + PLOTLY_CSS_FROM_ASSETS + metas,
                title=title,
                css=css,
                config=config,
                scripts=scripts,
                app_entry=app_entry,
                favicon=favicon,
                renderer=renderer,
            )
        )


class PageMemo:
    """The page (``wbcv.dashboards.app.build_layout``) for the current listing of runs, built once per listing.

    Runs are sealed, so the same listing gives the same page. The browser's preloaded request
    builds it while the page's scripts are evaluated, and the renderer's own request (which the
    browser does not match to the preload: it sends other headers) then finds it ready; a request
    that comes while the page is being built waits for it instead of building it again.
    """

    def __init__(self, catalog: RunCatalog, build: Callable[[list[RunSummary]], Component]) -> None:
        self._catalog = catalog
        self._build = build
        self._lock = threading.Lock()
        self._listing: tuple[str, ...] | None = None
        self._page: Component | None = None

    def __call__(self) -> Component:
        runs = self._catalog.summaries()
        listing = (*(s.run_id for s in runs), *(f"unreadable:{n}:{r}" for n, r in self._catalog.unreadable()))
        with self._lock:
            if self._page is None or listing != self._listing:
                self._page, self._listing = self._build(runs), listing
            return self._page
