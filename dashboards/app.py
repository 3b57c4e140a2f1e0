"""The Dash app: layout and callbacks. Data come from ``wbcv.dashboards.data``, figures from
``wbcv.validation.figures``.

Page, top to bottom: the runs list (a click opens a run); the measurand and the toggles (excluded
samples, sampling-floor band); tabs: run review (verdict and verification plot), method comparison
(Bland–Altman, Passing–Bablok), samples (table with CSV export), cells against expert labels
(confusion matrix), pre-classification against verification (``wbcv.dashboards.preclassification``),
compare two runs, coverage across runs (drift); below them the gallery of the
clicked sample's cells. The newest run's verification plot comes with the page (``build_layout``);
every other view is built by its own callback when its tab is open. How the page loads fast:
``wbcv.dashboards.page``.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any, Final

import dash_ag_grid as dag
import plotly.graph_objects as go
import polars as pl
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html
from dash.development.base_component import Component
from dash.exceptions import PreventUpdate

from wbcv.base.csvsafe import spreadsheet_safe_csv
from wbcv.base.errors import WbcvError
from wbcv.dashboards.auth import Credentials, require_basic_auth
from wbcv.dashboards.cells import cell_url, register_cell_route
from wbcv.dashboards.data import TABLE_COLUMNS, ComparisonRun, InferenceRun, RunCatalog, RunSummary, coverage_trend
from wbcv.dashboards.page import LeanDash, PageMemo, load_library_js
from wbcv.dashboards.preclassification import TAB_ID as PRECLASS_VIEW
from wbcv.dashboards.preclassification import preclassification_view
from wbcv.dashboards.table import NUMBER_FILTERS, TEXT_FILTERS, apply_view, block
from wbcv.dashboards.verify import NO_SIGN_IN, register_verify_route, verify_url
from wbcv.validation import cell_metrics
from wbcv.validation.figures import (
    bland_altman_plot,
    confusion_matrix_plot,
    coverage_trend_plot,
    excluded_samples_trace,
    paired_error_plot,
    regression_plot,
    verification_plot,
)
from wbcv.validation.verdict import coverage_error_label
from wbcv.validation.verification_log import VERIFIED_CHOICES, LogCheck, check_log, verified_classes

TABLE_PAGE_SIZE: Final[int] = 15
#: The sample table's columns that hold numbers (number filters, right-aligned); the others are text.
TABLE_NUMBERS: Final[frozenset[str]] = frozenset(
    {
        "reference",
        "predicted",
        "error_pct",
        "limit_pct",
        "n_classified",
        "n_unclassified",
        "counting_error_low_pct",
        "counting_error_high_pct",
    }
)
SAMPLES_GRID: Final[str] = "samples"  # the sample table's id (an AG Grid, built when its tab opens)
#: CSS classes of the sample table's rows (assets/style.css): outside the limit; excluded sample.
OUT_OF_LIMIT_ROW: Final[str] = "out-of-limit"
EXCLUDED_ROW: Final[str] = "excluded-sample"
#: Above this many samples the sampling-floor band starts switched off: software-rendered
#: browsers need about 1.5 s to draw 10,000 bands (benchmarks/bench_dashboard.py); the toggle
#: still shows it.
FLOOR_BAND_DEFAULT_MAX: Final[int] = 2000
SHOW_EXCLUDED: Final[str] = "excluded"
SHOW_FLOOR: Final[str] = "floor"
#: The tabs (dcc.Tabs values); a view's callback builds it only while its tab is open.
REVIEW_TAB, METHODS_TAB, SAMPLES_TAB, CELLS_TAB, COMPARE_TAB, DRIFT_TAB = (
    "review",
    "methods",
    "samples",
    "cells",
    "compare",
    "drift",
)
STUDIES_TAB: Final[str] = "studies"  # static: built with the page
PRECLASS_TAB: Final[str] = "preclassification"
NO_SAMPLE: Final[html.P] = html.P(
    "No sample selected: click a point of the verification plot or a row of the sample table.", className="note"
)
RUN_ROW: Final[str] = "run-row"  # pattern-matching id type of the runs list's rows
#: Above this many points the method-comparison panels draw their markers with WebGL: SVG markers
#: take seconds at 10,000, a WebGL context costs more than SVG below this.
WEBGL_ABOVE: Final[int] = 1000
GRAPH_CONFIG: Final[dcc.Graph.Config] = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def _empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 14}, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(template="plotly_white", xaxis_visible=False, yaxis_visible=False)
    return fig


def _measurand_controls(run: ComparisonRun, current: str | None, opts: list[str]) -> tuple[list[str], str, list[str]]:
    """The measurand choices of a run, the one to show, and the options with the floor band's default."""
    n_samples = run.table["sample_id"].n_unique()
    opts = [o for o in opts if o != SHOW_FLOOR] + ([SHOW_FLOOR] if n_samples <= FLOOR_BAND_DEFAULT_MAX else [])
    return run.measurands, current if current in run.measurands else run.measurands[0], opts


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _verdict_table(run: ComparisonRun, measurand: str) -> html.Div:
    head = [
        "measurand",
        "n",
        "within",
        "coverage",
        f"{100 * run.confidence:g} % CI",
        f"{coverage_error_label(run.required_coverage)} %",
        "sampling floor",
        "verdict",
    ]
    rows = []
    for m, v in run.verdicts.items():
        ci = "–" if v["coverage_lower"] is None else f"{_pct(v['coverage_lower'])} – {_pct(v['coverage_upper'])}"
        e95 = "–" if v["coverage_error_pct"] is None else f"{v['coverage_error_pct']:.1f}"
        cells = [m, v["n"], v["n_within"], _pct(v["coverage"]), ci, e95, _pct(v["sampling_floor"])]
        rows.append(
            html.Tr(
                [html.Td(c) for c in cells]
                + [html.Td("PASS" if v["passed"] else "FAIL", className="pass" if v["passed"] else "fail")],
                className="selected" if m == measurand else None,
            )
        )
    reason = run.verdicts.get(measurand, {}).get("reason", "")
    notes = [html.P(n, className="note") for n in run.notes]
    domain: list[str | html.B] = []
    if run.summary.domain == "out_of_domain":
        domain = [" · ", html.B("OUT OF DOMAIN", className="fail", id="domain-flag")]
    return html.Div(
        [
            html.P(
                [
                    html.B(f"run {run.run_id}: overall {run.summary.verdict.upper()}"),
                    *domain,
                    f" · protocol {run.summary.protocol} · model {run.summary.model} · "
                    f"{run.summary.n_values} values compared, {run.summary.exclusions_text}",
                ]
            ),
            html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="verdicts"),
            html.P(f"{measurand}: {reason}", id="verdict-reason"),
            *notes,
        ]
    )


def _verification_view(run: ComparisonRun, measurand: str, opts: list[str]) -> tuple[go.Figure, html.Div]:
    """The verification plot of a run's measurand with the options ticked, and the verdict table."""
    v = run.verdicts[measurand]
    fig = verification_plot(
        run.rows(measurand),
        measurand,
        v["allowable_error_pct"],
        v["coverage_error_pct"],
        v["required_coverage"],
        show_floor_band=SHOW_FLOOR in opts,
        webgl=True,
        absolute_limit=v["absolute_limit"],
    )
    if SHOW_EXCLUDED in opts:
        extra = run.excluded_rows(measurand)
        if extra is None:
            fig.add_annotation(
                text="excluded samples cannot be drawn: this run was compared before wbcv recorded their values; "
                "compare it again to see them",
                showarrow=False,
                xref="paper",
                yref="paper",
                x=0.5,
                y=1.0,
            )
        else:
            fig.add_trace(excluded_samples_trace(extra, webgl=True))
    fig.update_layout(uirevision=f"{run.run_id}/{measurand}", clickmode="event")
    return fig, _verdict_table(run, measurand)


#: The keys of the gallery's verification (assets/wbcv-verify.js), as the help line shows them.
VERIFY_HELP: Final[str] = (
    "Verify with the keyboard: ← → (or ↑ ↓) move between cells, Enter accepts the cell's class, "
    + ", ".join(f"{i} {c}" for i, c in enumerate(VERIFIED_CHOICES, start=1))
    + " reclassifies it. Unclassified cells come first."
)


def _verification_caption(entry: dict[str, Any] | None) -> list[Component]:
    """The verified class of a cell (its last record), or nothing when it is not verified yet."""
    if entry is None:
        return []
    mark = "✓" if entry["action"] == "accept" else "→"
    return [html.Span(f" {mark} {entry['to']} ({entry['user']})", className="verified")]


def _verification_notes(inf: InferenceRun, check: LogCheck, credentials: bool) -> list[Component]:
    notes: list[Component] = [html.P(VERIFY_HELP, className="note", id="verify-help")]
    if not credentials:
        notes.append(html.P(NO_SIGN_IN, className="note fail", id="verify-signin"))
    if not check.intact:
        found = "; ".join(str(f) for f in check.findings[:3])
        notes.append(html.P(f"the verification log of run {inf.run_id} is not intact: {found}", className="fail"))
    notes.append(html.P(f"{len(check.entries)} verification record(s) for run {inf.run_id}", id="verify-status"))
    return notes


def _gallery(run: ComparisonRun, sample_id: str, credentials: bool = False) -> list[Any]:
    inf = run.inference
    if inf is None:
        return [html.P(f"sample {sample_id}: cells not available ({'; '.join(run.notes)})")]
    cells = inf.cells_of(sample_id)
    if cells.is_empty():
        return [html.P(f"sample {sample_id}: no classified cells in run {inf.run_id}")]
    # unclassified cells first: they are the ones a reviewer must look at
    cells = cells.with_row_index("order").sort(["unclassified", "order"], descending=[True, False])
    n_unc = int(cells["unclassified"].sum())
    check = check_log(inf.path)
    verified = verified_classes(check.entries)
    figures = []
    for c in cells.iter_rows(named=True):
        label = c["expert_label"]
        caption: list[Component] = [
            html.Span("unclassified" if c["unclassified"] else c["predicted_class"], className="pred"),
            html.Span(f" {c['confidence']:.2f}", className="conf"),
        ]
        if c["unclassified"] and c["abstain_reason"]:
            caption.append(html.Span(f" ({c['abstain_reason']})", className="why"))
        if label is not None and label != c["predicted_class"]:
            caption.append(html.Span(f" expert: {label}", className="expert"))
        caption += _verification_caption(verified.get(c["cell_path"]))
        figures.append(
            html.Figure(
                [
                    html.Img(src=cell_url(inf.run_id, c["cell_path"]), alt=c["cell_path"]),
                    html.Figcaption(caption),
                ],
                className="cell unclassified" if c["unclassified"] else "cell",
                title=c["cell_path"],
                **{"data-cell": c["cell_path"], "data-verify-url": verify_url(inf.run_id)},
            )
        )
    return [
        html.H3(f"sample {sample_id}: {cells.height} cells, {n_unc} unclassified", id="gallery-title"),
        *_verification_notes(inf, check, credentials),
        html.Div(figures, className="cells"),
    ]


RUN_LIST_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("run", "run_id"),
    ("created (UTC)", "created_utc"),
    ("study", "study"),
    ("protocol", "protocol"),
    ("model", "model"),
    ("verdict", "verdict"),
    ("domain", "domain"),
    ("values", "n_values"),
    ("exclusions", "n_exclusions"),
)


def _runs_list(runs: list[RunSummary], selected: str | None) -> html.Div:
    """The runs, newest first; a click on a row opens that run (a plain table: no grid code to load)."""
    rows = []
    for s in runs:
        cells = []
        for _, key in RUN_LIST_COLUMNS:
            value = getattr(s, key)
            if key == "verdict":
                cells.append(html.Td(value.upper(), className=value.lower()))
            elif key == "domain":
                cells.append(html.Td(value.replace("_", " "), className="fail" if value == "out_of_domain" else None))
            else:
                cells.append(html.Td(value))
        rows.append(
            html.Tr(
                cells,
                id={"type": RUN_ROW, "index": s.run_id},
                className="selected" if s.run_id == selected else None,
                n_clicks=0,
                title=f"open run {s.run_id}",
            )
        )
    head = html.Thead(html.Tr([html.Th(name) for name, _ in RUN_LIST_COLUMNS]))
    return html.Div(html.Table([head, html.Tbody(rows)], id="runs-table", className="runs"), id="runs-list")


def _graph(graph_id: str, figure: go.Figure | None = None, **style: str) -> dcc.Graph:
    return dcc.Graph(id=graph_id, figure=figure if figure is not None else {}, config=GRAPH_CONFIG, style=style)


def _sample_column(column: str) -> dict[str, Any]:
    """The grid's definition of a sample-table column: its filter offers what wbcv.dashboards.table reads."""
    if column in TABLE_NUMBERS:
        kind, options = "number", NUMBER_FILTERS
    else:
        kind, options = "text", TEXT_FILTERS
    return {
        "field": column,
        "headerName": column,
        "cellDataType": kind,
        "filter": f"ag{kind.capitalize()}ColumnFilter",
        "filterParams": {"filterOptions": list(options), "maxNumConditions": 2},
        **({"type": "rightAligned"} if kind == "number" else {}),
        **({"minWidth": 130} if column == "sample_id" else {}),
    }


def samples_view() -> list[Component]:
    """The samples tab once AG Grid's code is loaded: the sample table and its CSV export.

    An AG Grid with the infinite row model: it asks the server for each page of rows under the
    filter and sort of its header (``getRowsRequest``, wbcv.dashboards.table), so only one page
    travels. Rows of samples outside the limit are shaded, excluded samples written in orange.
    """
    grid = dag.AgGrid(
        id=SAMPLES_GRID,
        columnDefs=[_sample_column(c) for c in TABLE_COLUMNS],
        defaultColDef={"sortable": True, "filter": True, "floatingFilter": True, "resizable": True},
        rowModelType="infinite",
        dashGridOptions={
            "pagination": True,
            "paginationPageSize": TABLE_PAGE_SIZE,
            "paginationPageSizeSelector": False,
            "cacheBlockSize": TABLE_PAGE_SIZE,  # one request per page
            # one request at a time: the grid takes the next response as the answer to its last request
            "maxConcurrentDatasourceRequests": 1,
            "domLayout": "autoHeight",
            "rowHeight": 30,
            "animateRows": False,
            "suppressCellFocus": True,
            "suppressColumnVirtualisation": True,  # 14 columns: every one in the page, and sized
        },
        # the values arrive as text ("false"), as in the CSV export
        rowClassRules={
            OUT_OF_LIMIT_ROW: "params.data && params.data.within_limit === 'false'",
            EXCLUDED_ROW: "params.data && !!params.data.excluded_reason",
        },
        columnSize="autoSize",
        className="samples-grid",
    )
    return [
        html.P("Click a row to see the sample's cells below; filter and sort in the table's header."),
        html.Button("download visible table as CSV", id="download-button"),
        dcc.Download(id="download"),
        grid,
    ]


def studies_view(catalog: RunCatalog) -> list[Component]:
    """The precision and flag studies of the runs folder with their figures (``wbcv.dashboards.studies``)."""
    lines = catalog.studies()
    if not lines:
        return [
            html.P("no precision or qualitative study run in this folder (`wbcv precision --out`)", className="note")
        ]
    rows = [
        html.Tr(
            [
                html.Td(s.run_id),
                html.Td(s.kind),
                html.Td(f"{s.input_name}: {s.n_rows} rows, {s.n_rows_excluded} excluded"),
                html.Td(
                    html.Span(s.problem, className="fail") if s.problem else html.Ul([html.Li(f) for f in s.figures])
                ),
            ]
        )
        for s in lines
    ]
    head = html.Thead(html.Tr([html.Th(h) for h in ("run", "study", "input", "figures")]))
    return [html.Table([head, html.Tbody(rows)], id="studies-table", className="runs")]


def _unreadable_note(catalog: RunCatalog) -> list[Component]:
    """A line under the runs list naming each run folder that could not be read, and why."""
    bad = catalog.unreadable()
    if not bad:
        return []
    text = "; ".join(f"{name}: {reason}" for name, reason in bad)
    return [html.P(f"{len(bad)} run folder(s) could not be read: {text}", id="runs-unreadable", className="note")]


def build_layout(catalog: RunCatalog, runs: list[RunSummary]) -> html.Div:
    """The page for the listed runs, with the newest one's verdict and verification plot already in it.

    The browser asks for the layout while it is still evaluating the page's scripts (``LeanDash``),
    so the first plot is built meanwhile and drawn without waiting for a callback. The first tab
    holds only that plot: every other view sits in a tab of its own and is built when opened, so
    the first load draws one plot (benchmarks/bench_dashboard.py).
    """
    first = runs[0].run_id if runs else None
    measurand_options: list[str] = []
    measurand: str | None = None
    opts = [SHOW_FLOOR]
    figure: go.Figure | None = None
    verdict: html.Div | None = None
    if first is not None:
        # an unreadable run leaves the controls empty, as the callbacks would
        with suppress(WbcvError):
            run = catalog.get(first)
            measurand_options, measurand, opts = _measurand_controls(run, None, opts)
            if measurand in run.verdicts:
                figure, verdict = _verification_view(run, measurand, opts)
    options = [{"label": f"{s.run_id} · {s.study} · {s.verdict.upper()}", "value": s.run_id} for s in runs]
    tabs: list[tuple[str, str, list[Component]]] = [
        ("run review", REVIEW_TAB, [html.Div(verdict, id="verdict"), _graph("verification", figure, height="520px")]),
        (
            "method comparison",
            METHODS_TAB,
            [html.Div([_graph("bland-altman"), _graph("regression")], className="pair")],
        ),
        # samples_view() once AG Grid's code is loaded, which happens when the tab is first opened
        ("samples", SAMPLES_TAB, [html.Div(html.P("loading the sample table…", className="note"), id="samples-view")]),
        ("cells against expert labels", CELLS_TAB, [html.Div(id="cell-metrics"), _graph("confusion")]),
        ("pre-classification against verification", PRECLASS_TAB, [html.Div(id=PRECLASS_VIEW)]),
        (
            "compare two runs",
            COMPARE_TAB,
            [
                html.Label(["second run", dcc.Dropdown(id="compare-run", options=options, value=None)]),
                html.Div([_graph("compare-a"), _graph("compare-b")], className="pair"),
                _graph("paired"),
            ],
        ),
        ("coverage across runs (drift)", DRIFT_TAB, [_graph("trend")]),
        ("precision and flag studies", STUDIES_TAB, studies_view(catalog)),
    ]
    return html.Div(
        [
            html.H1("wbcv · validation runs"),
            html.P(f"{len(runs)} comparison run(s) in {catalog.runs_dir}", id="runs-count"),
            _runs_list(runs, first),
            *_unreadable_note(catalog),
            dcc.Store(id="run", data=first),  # the open run: a click on the runs list changes it
            dcc.Store(id="grid-code", data=False),  # whether AG Grid's code is loaded (samples tab)
            html.Div(
                [
                    html.Label(
                        [
                            "measurand",
                            dcc.RadioItems(id="measurand", options=measurand_options, value=measurand, inline=True),
                        ]
                    ),
                    dcc.Checklist(
                        id="options",
                        options=[
                            {"label": "show excluded samples", "value": SHOW_EXCLUDED},
                            {"label": "show sampling-floor band", "value": SHOW_FLOOR},
                        ],
                        value=opts,
                        inline=True,
                    ),
                ],
                className="controls",
            ),
            dcc.Tabs(
                id="view",
                value=REVIEW_TAB,
                children=[dcc.Tab(label=label, value=value, children=children) for label, value, children in tabs],
            ),
            # below the tabs: a point of the plot or a row of the sample table opens the sample's cells
            html.H2("sample"),
            dcc.Store(id="selected-sample"),
            dcc.Store(id="table-sample"),  # the sample of the table row clicked last, and when
            html.Div([NO_SAMPLE], id="gallery", className="gallery"),
        ],
        className="page",
    )


def create_app(runs_dir: Path, credentials: Credentials | None = None) -> Dash:
    """The dashboard for the runs in ``runs_dir``; with credentials every route asks for them."""
    catalog = RunCatalog(runs_dir)
    app = LeanDash(
        __name__,
        title="wbcv dashboard",
        assets_folder=str(Path(__file__).parent / "assets"),
        serve_locally=True,  # no CDN: the page works on a closed network
        update_title=None,
        # The samples tab's components come from a callback once AG Grid's code is loaded, so the
        # page does not hold every component a callback names. (Without it Dash would also build
        # the page once at start-up, as the layout to check callbacks against, and write it into
        # every page's HTML: the newest run's plot twice over the wire.)
        suppress_callback_exceptions=True,
    )
    if credentials is not None:
        require_basic_auth(app.server, credentials)
    register_cell_route(app.server, catalog)
    register_verify_route(app.server, catalog, credentials)
    # a function of the listing: runs finished later appear on reload
    app.layout = PageMemo(catalog, lambda runs: build_layout(catalog, runs))
    app.catalog = catalog  # type: ignore[attr-defined]  # for tests and the benchmark

    def get_run(run_id: str | None) -> ComparisonRun:
        if not run_id:
            raise PreventUpdate
        try:
            return catalog.get(run_id)
        except WbcvError:
            raise PreventUpdate from None

    def only_in(tab: str, view: str) -> None:
        """A view is built only while its tab is open; opening the tab builds it afresh."""
        if view != tab:
            raise PreventUpdate

    @app.callback(
        Output("run", "data"),
        Input({"type": RUN_ROW, "index": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    def pick_run_from_list(clicks: list[int]) -> str:
        if not ctx.triggered_id or not any(clicks):
            raise PreventUpdate  # the list was redrawn, nobody clicked
        return str(ctx.triggered_id["index"])

    @app.callback(
        Output({"type": RUN_ROW, "index": ALL}, "className"),
        Input("run", "data"),
        prevent_initial_call=True,  # the layout marks the first run
    )
    def mark_open_run(run_id: str | None) -> list[str | None]:
        return ["selected" if o["id"]["index"] == run_id else None for o in ctx.outputs_list]

    @app.callback(
        Output("measurand", "options"),
        Output("measurand", "value"),
        Output("options", "value"),
        Input("run", "data"),
        State("measurand", "value"),
        State("options", "value"),
        prevent_initial_call=True,  # the layout has them for the first run (build_layout)
    )
    def measurands(run_id: str | None, current: str | None, opts: list[str]) -> tuple[list[str], str, list[str]]:
        return _measurand_controls(get_run(run_id), current, opts)

    @app.callback(
        Output("verification", "figure"),
        Output("verdict", "children"),
        Input("run", "data"),
        Input("measurand", "value"),
        Input("options", "value"),
        prevent_initial_call=True,  # the layout has them for the first run (build_layout)
    )
    def verification(run_id: str | None, measurand: str | None, opts: list[str]) -> tuple[go.Figure, html.Div]:
        run = get_run(run_id)
        if measurand not in run.verdicts:
            raise PreventUpdate
        return _verification_view(run, measurand, opts)

    @app.callback(
        Output("bland-altman", "figure"),
        Output("regression", "figure"),
        Input("view", "value"),
        Input("run", "data"),
        Input("measurand", "value"),
        prevent_initial_call=True,
    )
    def method_comparison(view: str, run_id: str | None, measurand: str | None) -> tuple[go.Figure, go.Figure]:
        only_in(METHODS_TAB, view)
        run = get_run(run_id)
        if measurand not in run.verdicts:
            raise PreventUpdate
        st = run.statistics.get(measurand, {})
        ba = st.get("bland_altman_absolute")
        pb = st.get("passing_bablok")
        rows = run.rows(measurand)
        webgl = rows.height > WEBGL_ABOVE
        return (
            bland_altman_plot(rows, measurand, ba if isinstance(ba, dict) else None, webgl=webgl),
            regression_plot(rows, measurand, pb if isinstance(pb, dict) else None, "Passing–Bablok", webgl=webgl),
        )

    def visible_rows(
        run_id: str | None, measurand: str | None, opts: list[str], request: dict[str, Any] | None
    ) -> pl.DataFrame:
        """The sample table's rows under the filter and sort of the grid's last request, all pages."""
        run = get_run(run_id)
        if measurand not in run.verdicts:
            raise PreventUpdate
        table = run.sample_table(measurand, SHOW_EXCLUDED in opts).with_columns(pl.col(pl.Float64).round(4))
        request = request or {}
        return apply_view(table, request.get("filterModel"), request.get("sortModel"))

    # The samples tab: the first time it opens, AG Grid's code is loaded (left out of the page,
    # wbcv.dashboards.page.LAZY_LIBRARIES), then the server sends the grid.
    app.clientside_callback(
        load_library_js("dash_ag_grid", SAMPLES_TAB),
        Output("grid-code", "data"),
        Input("view", "value"),
        State("grid-code", "data"),
    )

    @app.callback(Output("samples-view", "children"), Input("grid-code", "data"), prevent_initial_call=True)
    def samples_tab(loaded: bool) -> list[Component]:
        if not loaded:
            raise PreventUpdate
        return samples_view()

    @app.callback(
        Output(SAMPLES_GRID, "getRowsResponse"),
        Input(SAMPLES_GRID, "getRowsRequest"),
        State("run", "data"),
        State("measurand", "value"),
        State("options", "value"),
        prevent_initial_call=True,
    )
    def sample_rows(
        request: dict[str, Any] | None, run_id: str | None, measurand: str | None, opts: list[str]
    ) -> dict[str, Any]:
        if not request:
            raise PreventUpdate
        rows = visible_rows(run_id, measurand, opts, request)
        shown = block(rows, request.get("startRow"), request.get("endRow"))
        # booleans as text: as in the CSV export, and what the row class rules compare with
        return {"rowData": shown.with_columns(pl.col(pl.Boolean).cast(pl.String)).to_dicts(), "rowCount": rows.height}

    # Another run, measurand or choice of excluded samples: the grid drops its rows and asks again,
    # keeping its filter, sort and page (no request while the table is not on screen).
    app.clientside_callback(
        f"""function (run, measurand, opts) {{
            const grid = window.dash_ag_grid && window.dash_ag_grid.getApi({SAMPLES_GRID!r});
            if (grid && !grid.isDestroyed()) {{ grid.purgeInfiniteCache(); }}
        }}""",
        Input("run", "data"),
        Input("measurand", "value"),
        Input("options", "value"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output("download", "data"),
        Input("download-button", "n_clicks"),
        State("run", "data"),
        State("measurand", "value"),
        State("options", "value"),
        State(SAMPLES_GRID, "getRowsRequest"),
        prevent_initial_call=True,
    )
    def download(
        _: int, run_id: str, measurand: str, opts: list[str], request: dict[str, Any] | None
    ) -> dict[str, Any]:
        # the table's rows under the user's filter and sort: what is visible, all pages
        rows = visible_rows(run_id, measurand, opts, request)
        name = f"{run_id}-{measurand.replace('#', 'count').replace('%', 'pct')}.csv"
        return dcc.send_string(spreadsheet_safe_csv(rows), name)  # text cells made inert: wbcv.base.csvsafe

    @app.callback(
        Output("table-sample", "data"),
        Input(SAMPLES_GRID, "cellClicked"),
        State("run", "data"),
        State("measurand", "value"),
        State("options", "value"),
        State(SAMPLES_GRID, "getRowsRequest"),
        prevent_initial_call=True,
    )
    def pick_sample_from_table(
        cell: dict[str, Any] | None,
        run_id: str | None,
        measurand: str | None,
        opts: list[str],
        request: dict[str, Any] | None,
    ) -> dict[str, Any]:
        # the row's place in the view the grid asked for last, which is the one on screen
        if not cell or cell.get("rowIndex") is None:
            raise PreventUpdate
        row = block(visible_rows(run_id, measurand, opts, request), cell["rowIndex"], cell["rowIndex"] + 1)
        if row.is_empty():
            raise PreventUpdate
        return {"sample_id": row["sample_id"][0], "at": cell.get("timestamp")}

    @app.callback(
        Output("selected-sample", "data"),
        Input("verification", "clickData"),
        Input("table-sample", "data"),
        Input("run", "data"),
        prevent_initial_call=True,
    )
    def select_sample(click: dict[str, Any] | None, picked: dict[str, Any] | None, _: str | None) -> str | None:
        if ctx.triggered_id == "run":
            return None  # another run: its samples are others
        if ctx.triggered_id == "verification" and click:
            sample_id = click["points"][0].get("text")  # wbcv.validation.figures.verification_plot
            if sample_id:
                return str(sample_id)
        if ctx.triggered_id == "table-sample" and picked:
            return str(picked["sample_id"])
        raise PreventUpdate

    @app.callback(
        Output("gallery", "children"),
        Input("selected-sample", "data"),
        State("run", "data"),
        prevent_initial_call=True,  # the layout says no sample is selected
    )
    def gallery(sample_id: str | None, run_id: str | None) -> list[Any]:
        if not sample_id:
            return [NO_SAMPLE]
        return _gallery(get_run(run_id), sample_id, credentials is not None)

    @app.callback(
        Output("confusion", "figure"),
        Output("cell-metrics", "children"),
        Input("view", "value"),
        Input("run", "data"),
        prevent_initial_call=True,
    )
    def confusion(view: str, run_id: str | None) -> tuple[go.Figure, Any]:
        only_in(CELLS_TAB, view)
        run = get_run(run_id)
        labelled = run.inference.labelled if run.inference is not None else None
        if labelled is None or labelled.confusion is None:
            return _empty_figure("no expert labels in this run's batch"), ""
        cm = labelled.confusion
        summary = (
            f"{int(cm.sum())} labelled cells · accuracy {_pct(cell_metrics.accuracy(cm))} · "
            f"balanced accuracy {_pct(cell_metrics.balanced_accuracy(cm))} · "
            f"unclassified {_pct(cell_metrics.unclassified_rate(cm))}"
            + (f" · {labelled.n_outside} cells labelled outside the five classes" if labelled.n_outside else "")
        )
        return confusion_matrix_plot(cm), html.P(summary)

    @app.callback(
        Output(PRECLASS_VIEW, "children"),
        Input("view", "value"),
        Input("run", "data"),
        prevent_initial_call=True,
    )
    def preclassification(view: str, run_id: str | None) -> list[Component]:
        only_in(PRECLASS_TAB, view)
        return preclassification_view(get_run(run_id))

    @app.callback(
        Output("compare-a", "figure"),
        Output("compare-b", "figure"),
        Output("paired", "figure"),
        Input("view", "value"),
        Input("run", "data"),
        Input("compare-run", "value"),
        Input("measurand", "value"),
        prevent_initial_call=True,
    )
    def compare_runs(view: str, run_a: str | None, run_b: str | None, measurand: str | None) -> tuple[go.Figure, ...]:
        only_in(COMPARE_TAB, view)
        a = get_run(run_a)
        if not run_b:
            blank = _empty_figure("choose a second run")
            return blank, blank, blank
        b = get_run(run_b)
        figs = []
        for run, tag in ((a, "A"), (b, "B")):
            v = run.verdicts.get(measurand or "")
            if v is None:
                figs.append(_empty_figure(f"{measurand} is not in run {run.run_id}"))
                continue
            fig = verification_plot(
                run.rows(measurand or ""),
                measurand or "",
                v["allowable_error_pct"],
                v["coverage_error_pct"],
                v["required_coverage"],
                webgl=True,
                absolute_limit=v["absolute_limit"],
            )
            fig.update_layout(title=f"{tag}: {run.run_id} · coverage {_pct(v['coverage'])}", showlegend=False)
            figs.append(fig)
        v = a.verdicts.get(measurand or "")
        paired = (
            paired_error_plot(a.table, b.table, measurand or "", a.run_id, b.run_id, v["allowable_error_pct"])
            if v is not None and measurand in b.verdicts
            else _empty_figure("the runs have no measurand in common")
        )
        return figs[0], figs[1], paired

    @app.callback(
        Output("trend", "figure"),
        Input("view", "value"),
        Input("measurand", "value"),
        State("run", "data"),
        prevent_initial_call=True,
    )
    def trend(view: str, measurand: str | None, run_id: str | None) -> go.Figure:
        only_in(DRIFT_TAB, view)
        if not measurand:
            raise PreventUpdate
        points = coverage_trend(catalog, measurand)
        if points.is_empty():
            return _empty_figure(f"no run has a coverage for {measurand}")
        return coverage_trend_plot(points, measurand, get_run(run_id).required_coverage)

    return app
