"""Plotly figure builders: the single definition of every plot, for the report and the dashboard.

``verification_plot`` is the source study's verification plot: error % (y) against the reference
count (x), one point per sample; red dotted lines at ±the allowable error (the effective limit
max(L, 100 · A / reference), which widens at low reference values when the protocol gives an
absolute limit A); blue dotted lines at ±the error that covers the required fraction of samples;
and, as grey vertical bars, each sample's sampling-floor band (the central 95 % of the error that
counting its cells alone would cause, ``wbcv.validation.sampling.counting_error_interval``).
``bland_altman_plot`` and ``regression_plot`` draw the method-comparison results stored in statistics.json;
``confusion_matrix_plot`` the cell-level confusion matrix against expert labels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

import numpy as np
import plotly.graph_objects as go
import polars as pl

from wbcv.base.taxonomy import CELL_CLASSES, UNCLASSIFIED
from wbcv.validation.bias_range import RegressionLimits
from wbcv.validation.measurands import MEASURANDS
from wbcv.validation.protocol import MeasurandRule, effective_limit_pct

LIMIT_COLOUR: Final[str] = "#d62728"  # red, as in the source study
COVERAGE_COLOUR: Final[str] = "#1f4fd6"  # blue
POINT_COLOUR: Final[str] = "#333333"
FLOOR_COLOUR: Final[str] = "rgba(128,128,128,0.35)"


def _hline(name: str, y: float, x0: float, x1: float, colour: str, group: str, show: bool) -> go.Scatter:
    return go.Scatter(
        x=[x0, x1],
        y=[y, y],
        mode="lines",
        name=name,
        legendgroup=group,
        showlegend=show,
        line={"color": colour, "dash": "dot", "width": 2},
        hoverinfo="name",
    )


def _sample_points(
    data: pl.DataFrame, name: str, marker: dict[str, Any], note: tuple[str, str], webgl: bool, tag: str = ""
) -> go.Scatter | go.Scattergl:
    """One point per sample at (reference, error %), hover: sample, reference, predicted, error,
    cells counted and ``note`` (column, label).

    The sample id is the point's text: a click on a point reads it there (wbcv.dashboards.app). Fixed-width
    string and float arrays, which plotly copies whole (lists and object arrays it checks item by
    item: about a second for 10,000 samples), and floats travel as binary in the figure's JSON.
    """
    column, label = note
    scatter = go.Scattergl if webgl else go.Scatter
    return scatter(
        x=data["reference"].to_numpy(),
        y=data["error_pct"].to_numpy(),
        mode="markers",
        name=name,
        marker=marker,
        text=data["sample_id"].to_numpy().astype(str),
        customdata=data.select(pl.col("predicted", "n_classified").cast(pl.Float64)).to_numpy(),
        hovertext=data[column].fill_null("").to_numpy().astype(str),
        hovertemplate=(
            f"sample %{{text}}{tag}<br>reference %{{x:.3g}}<br>predicted %{{customdata[0]:.3g}}<br>"
            f"error %{{y:.1f}} %<br>cells counted %{{customdata[1]}}<br>{label} %{{hovertext}}<extra></extra>"
        ),
    )


def limit_line(
    rule: MeasurandRule, x0: float, x1: float, references: np.ndarray, cap: float
) -> tuple[np.ndarray, np.ndarray]:
    """The upper limit line of the verification plot over [x0, x1]: y = min(limit(x), cap), with
    limit(x) = ``effective_limit_pct(rule, x)``, the effective limit the comparison judges each sample by.

    Without an absolute limit it is flat at L. With one it follows 100 · A / x below the knee
    x = 100 · A / L, through a vertex at every sample's reference value there (so a sample lies
    between ±y at its reference exactly when it is within limits) and a geometric grid for the
    curve's shape; it is cut at ``cap`` (where the limit tends to infinity as x → 0), which the
    caller sets above every sample's |error| so that the cut does not change that equivalence.
    """
    if rule.absolute_limit is None:
        xs = np.array([x0, x1])
    else:
        knee = 100.0 * rule.absolute_limit / rule.allowable_error_pct
        at_cap = 100.0 * rule.absolute_limit / cap  # where 100 A / x reaches the cap
        lo, hi = max(x0, at_cap), min(x1, knee)
        parts = [np.array([x0, x1]), np.array([v for v in (at_cap, knee) if x0 < v < x1])]
        if lo < hi:
            parts.append(np.geomspace(lo, hi, 64))
            parts.append(references[(references > lo) & (references < hi)])
        xs = np.unique(np.concatenate(parts))
    return xs, np.minimum(effective_limit_pct(rule, xs), cap)


def verification_plot(
    rows: pl.DataFrame,
    measurand: str,
    limit_pct: float,
    coverage_error_pct: float | None,
    required_coverage: float = 0.95,
    show_floor_band: bool = True,
    webgl: bool = False,
    absolute_limit: float | None = None,
) -> go.Figure:
    """The verification plot of one measurand from comparison-table rows (``wbcv.validation.compare``).

    ``limit_pct`` and ``absolute_limit`` are the measurand's allowable error L (%) and absolute limit
    A of the protocol; the red dotted lines are ±the effective limit max(L, 100 · A / reference)
    (:func:`limit_line`), which widens at low reference values when A is given.
    """
    m = MEASURANDS[measurand]
    rule = MeasurandRule(limit_pct, absolute_limit)
    data = rows.filter((pl.col("measurand") == measurand) & pl.col("error_pct").is_not_null())
    # NumPy arrays, not lists: plotly validates a list element by element (about a second for
    # 10,000 samples) and sends float arrays as compact binary in the figure's JSON.
    x = data["reference"].to_numpy()
    x0, x1 = (float(x.min()), float(x.max())) if data.height else (0.0, 1.0)
    pad = 0.03 * (x1 - x0 or 1.0)
    x0, x1 = x0 - pad, x1 + pad
    fig = go.Figure()
    if show_floor_band and data.height and data["counting_error_low_pct"].null_count() < data.height:
        band = data.drop_nulls("counting_error_low_pct")
        # one vertical segment per sample: (ref, low), (ref, high), then a gap (NaN)
        xs = np.repeat(band["reference"].to_numpy(), 3)
        xs[2::3] = np.nan
        ys = np.full(3 * band.height, np.nan)
        ys[0::3] = band["counting_error_low_pct"].to_numpy()
        ys[1::3] = band["counting_error_high_pct"].to_numpy()
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name="sampling floor (95 % counting band)",
                line={"color": FLOOR_COLOUR, "width": 4},
                hoverinfo="skip",
            )
        )
    fig.add_trace(
        _sample_points(
            data,
            "samples",
            {"color": POINT_COLOUR, "size": 7, "opacity": 0.8},
            note=("flags", "flags"),
            webgl=webgl,
        )
    )
    largest = float(np.abs(data["error_pct"].to_numpy()).max()) if data.height else 0.0
    line_x, line_y = limit_line(rule, x0, x1, x, cap=1.25 * max(largest, limit_pct))
    unit = "percentage points" if m.unit == "%" else m.unit  # an absolute limit of a % is in points
    name = f"±{limit_pct:g} % allowable error" + (
        f" or ±{absolute_limit:g} {unit}, whichever is wider" if absolute_limit is not None else ""
    )
    for sign in (1, -1):
        fig.add_trace(
            go.Scatter(
                x=line_x,
                y=sign * line_y,
                mode="lines",
                name=name,
                legendgroup="limit",
                showlegend=sign == 1,
                line={"color": LIMIT_COLOUR, "dash": "dot", "width": 2},
                hoverinfo="name",
            )
        )
    if coverage_error_pct is not None:
        for sign in (1, -1):
            fig.add_trace(
                _hline(
                    f"±{coverage_error_pct:.1f} % covers {100 * required_coverage:g} % of samples",
                    sign * coverage_error_pct,
                    x0,
                    x1,
                    COVERAGE_COLOUR,
                    "coverage",
                    sign == 1,
                )
            )
    fig.update_layout(
        title=f"{measurand}: error against reference ({data.height} samples)",
        xaxis_title=f"reference {measurand} ({m.unit})",
        yaxis_title="error (%)",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def bland_altman_plot(
    rows: pl.DataFrame,
    measurand: str,
    stats: dict[str, Any] | None,
    webgl: bool = False,
    regression_limits: dict[str, Any] | None = None,
) -> go.Figure:
    """Differences (test - reference) against the pair means, with bias and limits of agreement;
    with ``regression_limits`` (``wbcv.validation.bias_range.RegressionLimits`` as statistics.json
    holds it) also the regression-based bias and limits over the observed means."""
    data = rows.filter(pl.col("measurand") == measurand)
    mean = ((data["predicted"] + data["reference"]) / 2).to_numpy()
    scatter = go.Scattergl if webgl else go.Scatter
    fig = go.Figure(
        scatter(
            x=mean,
            y=data["difference"].to_numpy(),
            mode="markers",
            name="samples",
            marker={"color": POINT_COLOUR, "size": 6},
            text=data["sample_id"].to_numpy().astype(str),
        )
    )
    if stats and "bias" in stats and mean.size:
        x0, x1 = float(mean.min()), float(mean.max())
        fig.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[stats["bias"]] * 2,
                mode="lines",
                name=f"bias {stats['bias']:.3g}",
                line={"color": COVERAGE_COLOUR},
            )
        )
        for key, label in (("loa_lower", "lower"), ("loa_upper", "upper")):
            fig.add_trace(
                go.Scatter(
                    x=[x0, x1],
                    y=[stats[key]] * 2,
                    mode="lines",
                    name=f"{label} limit of agreement {stats[key]:.3g}",
                    line={"color": LIMIT_COLOUR, "dash": "dash"},
                )
            )
    if regression_limits and mean.size:
        _add_regression_limits(fig, mean, regression_limits)
    fig.update_layout(
        title=f"{measurand}: Bland–Altman",
        xaxis_title="mean of test and reference",
        yaxis_title="test − reference",
        template="plotly_white",
    )
    return fig


def _add_regression_limits(fig: go.Figure, mean: np.ndarray, rl: dict[str, Any]) -> None:
    """The regression-based bias and limits of agreement (Bland & Altman 1999 §3.2) over the observed means."""
    a = np.linspace(float(mean.min()), float(mean.max()), 50)
    fit = RegressionLimits(**{f.name: rl[f.name] for f in dataclasses.fields(RegressionLimits)})
    bias, lower, upper = fit.at(a)
    for y, name, dash in (
        (bias, "regression bias", "dot"),
        (lower, "regression limits", "dashdot"),
        (upper, None, "dashdot"),
    ):
        fig.add_trace(
            go.Scatter(
                x=a,
                y=y,
                mode="lines",
                name=name or "regression limits",
                showlegend=name is not None,
                legendgroup="regression-limits" if name != "regression bias" else None,
                line={"color": COVERAGE_COLOUR if name == "regression bias" else LIMIT_COLOUR, "dash": dash},
            )
        )


def regression_plot(
    rows: pl.DataFrame, measurand: str, fit: dict[str, Any] | None, label: str, webgl: bool = False
) -> go.Figure:
    """Test against reference with the identity line and a fitted regression line."""
    data = rows.filter(pl.col("measurand") == measurand)
    x = data["reference"].to_numpy()
    scatter = go.Scattergl if webgl else go.Scatter
    fig = go.Figure(
        scatter(
            x=x,
            y=data["predicted"].to_numpy(),
            mode="markers",
            name="samples",
            marker={"color": POINT_COLOUR, "size": 6},
            text=data["sample_id"].to_numpy().astype(str),
        )
    )
    if x.size:
        lo, hi = float(x.min()), float(x.max())
        fig.add_trace(
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="identity", line={"color": "#999999", "dash": "dot"})
        )
        if fit and "slope" in fit:
            fig.add_trace(
                go.Scatter(
                    x=[lo, hi],
                    y=[fit["intercept"] + fit["slope"] * lo, fit["intercept"] + fit["slope"] * hi],
                    mode="lines",
                    name=f"{label}: y = {fit['intercept']:.3g} + {fit['slope']:.3g} x",
                    line={"color": COVERAGE_COLOUR},
                )
            )
    fig.update_layout(
        title=f"{measurand}: {label} regression", xaxis_title="reference", yaxis_title="test", template="plotly_white"
    )
    return fig


def confusion_matrix_plot(cm: np.ndarray, title: str = "Cells: expert label against prediction") -> go.Figure:
    """Heat map of ``wbcv.validation.cell_metrics.confusion_matrix`` (rows: expert label, columns: the
    predicted class then unclassified); each cell shows its count and its share of the row."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (len(CELL_CLASSES), len(CELL_CLASSES) + 1):
        raise ValueError(f"expected a {len(CELL_CLASSES)} x {len(CELL_CLASSES) + 1} matrix, got {cm.shape}")
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    text = [
        [f"{n}<br>{100 * f:.1f} %" for n, f in zip(row, frow, strict=True)] for row, frow in zip(cm, share, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=[*CELL_CLASSES, UNCLASSIFIED],
            y=list(CELL_CLASSES),
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="expert %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="predicted",
        yaxis_title="expert label",
        yaxis={"autorange": "reversed"},
        template="plotly_white",
    )
    return fig


# --- Builders added for the dashboard (issue 7); the ones above are shared with the report. ---

EXCLUDED_COLOUR: Final[str] = "#ff7f0e"  # orange: visibly not one of the counted samples


def excluded_samples_trace(rows: pl.DataFrame, webgl: bool = False) -> go.Scatter | go.Scattergl:
    """Excluded samples at the error they would have had, as hollow markers, to add to a verification plot.

    ``rows``: comparison-table columns plus ``excluded_reason``. The hover names the reason, so an
    excluded point is never mistaken for a counted one; the points are those of ``verification_plot``
    otherwise, so a click on either selects a sample the same way.
    """
    data = rows.filter(pl.col("error_pct").is_not_null())
    marker = {"color": EXCLUDED_COLOUR, "size": 8, "symbol": "circle-open", "line": {"width": 2}}
    return _sample_points(
        data, "excluded (not counted)", marker, note=("excluded_reason", "reason:"), webgl=webgl, tag=" (EXCLUDED)"
    )


def coverage_trend_plot(points: pl.DataFrame, measurand: str, required_coverage: float) -> go.Figure:
    """Coverage of one measurand across runs with its Clopper–Pearson CI, against the requirement (drift).

    ``points``: run_id, created_utc, model, coverage, coverage_lower, coverage_upper, confidence, n,
    passed. Each run's interval is at its own protocol's confidence, which the legend states (or, when
    the runs differ, the hover of each point).
    """
    levels = sorted({float(c) for c in points["confidence"].to_list()})
    ci_label = f"{100 * levels[0]:g} % CI" if len(levels) == 1 else "CI at each run's confidence"
    cov = [100 * v for v in points["coverage"].to_list()]
    lo = [100 * v for v in points["coverage_lower"].to_list()]
    hi = [100 * v for v in points["coverage_upper"].to_list()]
    fig = go.Figure(
        go.Scatter(
            x=points["created_utc"].to_list(),
            y=cov,
            mode="lines+markers",
            name=f"coverage ({ci_label})",
            line={"color": POINT_COLOUR},
            marker={
                "size": 9,
                "color": [COVERAGE_COLOUR if p else LIMIT_COLOUR for p in points["passed"].to_list()],
            },
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [h - c for h, c in zip(hi, cov, strict=True)],
                "arrayminus": [c - lw for c, lw in zip(cov, lo, strict=True)],
                "color": "#777777",
            },
            customdata=points.select("run_id", "model", "n", (100 * pl.col("confidence")).round(4)).rows(),
            hovertemplate=(
                "run %{customdata[0]}<br>model %{customdata[1]}<br>coverage %{y:.1f} % of %{customdata[2]} samples"
                "<br>interval at %{customdata[3]} % confidence<extra></extra>"
            ),
        )
    )
    fig.add_hline(
        y=100 * required_coverage,
        line={"color": LIMIT_COLOUR, "dash": "dot"},
        annotation_text=f"required {100 * required_coverage:g} %",
    )
    fig.update_layout(
        title=f"{measurand}: coverage across runs",
        xaxis_title="run created (UTC)",
        yaxis_title="samples within the allowable error (%)",
        yaxis_range=[min([*lo, 100 * required_coverage]) - 5, 101],
        template="plotly_white",
        showlegend=False,
    )
    return fig


def paired_error_plot(
    a: pl.DataFrame, b: pl.DataFrame, measurand: str, label_a: str, label_b: str, limit_pct: float
) -> go.Figure:
    """Two runs on the same samples: each sample's error % in run A (x) against run B (y).

    Points below the diagonal's band improved in B; the dotted square is the allowable error.
    """
    cols = ["sample_id", "error_pct"]
    both = (
        a.filter(pl.col("measurand") == measurand)
        .select(cols)
        .join(b.filter(pl.col("measurand") == measurand).select(cols), on="sample_id", suffix="_b")
        .drop_nulls()
    )
    fig = go.Figure(
        go.Scattergl(
            x=both["error_pct"].to_numpy(),
            y=both["error_pct_b"].to_numpy(),
            mode="markers",
            name="samples in both runs",
            marker={"color": POINT_COLOUR, "size": 6, "opacity": 0.8},
            customdata=both.select("sample_id").to_numpy(),
            hovertemplate="sample %{customdata[0]}<br>error A %{x:.1f} %<br>error B %{y:.1f} %<extra></extra>",
        )
    )
    span = max([*both["error_pct"].abs().to_list(), *both["error_pct_b"].abs().to_list(), limit_pct]) * 1.05
    fig.add_trace(
        go.Scatter(
            x=[-span, span], y=[-span, span], mode="lines", name="same error", line={"color": "#999999", "dash": "dot"}
        )
    )
    fig.add_shape(
        type="rect",
        x0=-limit_pct,
        x1=limit_pct,
        y0=-limit_pct,
        y1=limit_pct,
        line={"color": LIMIT_COLOUR, "dash": "dot"},
    )
    fig.update_layout(
        title=f"{measurand}: error per sample, {both.height} samples in both runs",
        xaxis_title=f"error % in A ({label_a})",
        yaxis_title=f"error % in B ({label_b})",
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig
