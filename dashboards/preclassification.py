"""The dashboard's pre-classification tab: the analyzer's pre-classified classes against the
technologist's verified ones (ICSH 2019), as the comparison's statistics.json holds them.

Nothing is computed here. The figures are the ones `wbcv compare` wrote under
``preclassification`` (``wbcv.validation.preclassification``), read only while statistics.json
still has the sha256 its run.json recorded (an altered file shows as altered, never with its
figures), and put into words by the report's own ``preclassification_rows``, so the tab and the
report's section say the same: agreement and reclassification rate with their Wilson intervals,
Cohen's kappa unweighted, linear and quadratic with their intervals, per class sensitivity, PPV and
specificity, the agreement matrix, what each pre-classified class was reclassified to, and per
sample the pre-classified minus the verified differential.

A comparison without these figures says why: a per-sample export has no single cells; a
comparison of wbcv's own model holds none in statistics.json, since its cells are verified in the
gallery after the comparison is sealed, and `wbcv report` computes their figures from the
verification log when the report is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from dash import html
from dash.development.base_component import Component

from wbcv.base.atomic import sha256_file
from wbcv.base.tables import STATISTICS_FILE
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.dashboards.data import ComparisonRun
from wbcv.validation.report import preclassification_rows

TAB_ID: Final[str] = "preclassification-view"  # the tab's container, filled when the tab opens
KEY: Final[str] = "preclassification"  # the key of statistics.json


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str) -> html.Table:
    body = [html.Tr([html.Td(str(c)) for c in r]) for r in rows]
    return html.Table(
        [html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)], id=table_id, className="stats"
    )


def _matrix(categories: list[str], matrix: list[list[int]]) -> html.Table:
    """Rows verified, columns pre-classified; the diagonal (category kept) in bold."""
    head = html.Tr([html.Th("verified ↓ · pre-classified →"), *(html.Th(c) for c in categories)])
    rows = [
        html.Tr(
            [html.Th(verified)] + [html.Td(n, className="diag" if i == j else None) for j, n in enumerate(matrix[i])]
        )
        for i, verified in enumerate(categories)
    ]
    return html.Table([html.Thead(head), html.Tbody(rows)], id="preclass-matrix", className="stats")


def _absent(run: ComparisonRun) -> str:
    """Why a comparison has no pre-classification figures in its statistics.json."""
    link = run.record.inputs.inference_run
    if link.kind == "results":
        return (
            f"the counts of this comparison are an analyzer's per-sample export ({link.producer}): no single cells, "
            "so no pre-classification to set against verification (a per-cell table, `wbcv import-results "
            "--format cells`, gives these figures)"
        )
    return (
        "this comparison is of wbcv's own model, whose statistics.json holds no pre-classification figures: its "
        "cells are verified in the gallery below (click a sample), after the comparison was sealed, and "
        "`wbcv report` computes the figures of that verification from the verification log when the report "
        "is written"
    )


def _figures(pc: dict[str, Any]) -> list[Component]:
    kappa_names = ("unweighted", "linear weights", "quadratic weights")
    summary = [
        ("agreement (category kept by the technologist)", *pc["agreement"]),
        ("reclassification rate (class name changed)", *pc["reclassification"]),
        *(
            (f"Cohen's kappa, {name}", k, ci)
            for name, k, ci in zip(kappa_names, pc["kappa"], pc["kappa_ci"], strict=True)
        ),
    ]
    per_class_head = ["category", "verified", "pre-classified", "sensitivity", "CI", "PPV", "CI", "specificity", "CI"]
    parts: list[Component] = [
        html.P(
            f"{pc['n_cells']} cells with both a pre-classified and a verified class"
            + (
                f" ({pc['n_cells_without_both']} without both are not in these figures)"
                if pc["n_cells_without_both"]
                else ""
            )
            + f"; the verified class is the reference; intervals: {pc['level']}.",
            id="preclass-cells",
        ),
        _table(["figure", "estimate", pc["level"]], summary, "preclass-summary"),
        html.H4("per class"),
        _table(per_class_head, pc["per_class"], "preclass-per-class"),
        html.H4("agreement matrix (cells)"),
        _matrix(pc["categories"], pc["matrix"]),
        html.H4("reclassified to"),
    ]
    if pc["reclassified_to"]:
        rows = list(pc["reclassified_to"].items())
        parts.append(
            _table(["pre-classified as", "reclassified by the technologist to (cells)"], rows, "preclass-reclassified")
        )
    else:
        parts.append(html.P("no cell was moved to another category", id="preclass-reclassified"))
    parts += [
        html.H4("per sample: pre-classified minus verified differential (percentage points of the classified cells)"),
        _table(["sample", "cells", "changed", *CELL_CLASSES], pc["per_sample"], "preclass-per-sample"),
    ]
    if pc["per_sample_more"]:
        parts.append(
            html.P(f"{pc['per_sample_more']} more samples are in statistics.json of this run", className="note")
        )
    return parts


def preclassification_view(run: ComparisonRun) -> list[Component]:
    """The tab's content for one comparison run (module docstring)."""
    title = html.H3("Pre-classification against verification")
    path = run.path / STATISTICS_FILE
    if not path.is_file() or run.record.files.get(STATISTICS_FILE) != sha256_file(path):
        text = (
            f"{STATISTICS_FILE} of run {run.run_id} is missing or differs from its run.json: altered; nothing is shown"
        )
        return [title, html.P(text, className="fail", id="preclass-none")]
    if KEY not in run.statistics:
        return [title, html.P(f"No pre-classification figures: {_absent(run)}.", className="note", id="preclass-none")]
    pc = preclassification_rows(run.statistics[KEY])
    if pc is None or "not_computed" in pc:
        why = pc["not_computed"] if pc else "statistics.json holds an empty entry"
        return [title, html.P(f"Not computed: {why}.", className="note", id="preclass-none")]
    return [title, *_figures(pc)]
