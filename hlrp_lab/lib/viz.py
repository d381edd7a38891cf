"""Metric curves and scatter plots as a static PNG (matplotlib) and an interactive HTML page (plotly), from the
same data and in the same colours."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

PALETTE = colormaps["tab10"].colors
# Fixed margins instead of tight_layout, which draws every figure twice (0.10 vs 0.16 CPU-s per PNG).
MARGINS = {"left": 0.12, "right": 0.97, "top": 0.92, "bottom": 0.12}


def color(i: int) -> tuple[float, float, float]:
    """The ``i``-th colour of the palette (matplotlib RGB in [0, 1])."""
    return PALETTE[i % len(PALETTE)]


def css_color(i: int, alpha: float = 1.0) -> str:
    """The ``i``-th colour of the palette for plotly."""
    r, g, b = (int(255 * c) for c in color(i))
    return f"rgba({r},{g},{b},{alpha})"


@dataclass(frozen=True)
class Curve:
    """One line; ``std`` draws a band of mean ± std around it."""

    label: str
    x: np.ndarray
    y: np.ndarray
    std: np.ndarray | None = None


def save_plot(curves: list[Curve], stem: Path, title: str, x_label: str, y_label: str) -> list[Path]:
    """Write ``stem.png`` and ``stem.html``; return both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, html = stem.with_suffix(".png"), stem.with_suffix(".html")
    save_png(curves, png, title, x_label, y_label)
    plotly_figure(curves, title, x_label, y_label).write_html(html, include_plotlyjs="cdn")
    return [png, html]


def save_png(curves: list[Curve], path: Path, title: str, x_label: str, y_label: str) -> None:
    fig, ax = new_png_figure()
    for i, curve in enumerate(curves):
        ax.plot(curve.x, curve.y, label=curve.label, color=color(i), linewidth=1.6)
        if curve.std is not None:
            ax.fill_between(curve.x, curve.y - curve.std, curve.y + curve.std, color=color(i), alpha=0.2)
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    finish_png(fig, ax, path)


def new_png_figure() -> tuple[Figure, Axes]:
    """A figure outside pyplot (nothing to close, no global state) with one Axes."""
    fig = Figure(figsize=(7, 4.2), dpi=120)
    return fig, fig.add_subplot()


def finish_png(fig: Figure, ax: Axes, path: Path) -> None:
    """Grid, legend, fixed margins; write ``path``."""
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.subplots_adjust(**MARGINS)
    fig.savefig(path)


def plotly_figure(curves: list[Curve], title: str, x_label: str, y_label: str) -> go.Figure:
    """One line trace per curve, plus one filled band trace for each curve with a std."""
    fig = go.Figure()
    for i, curve in enumerate(curves):
        if curve.std is not None:
            band_x = np.concatenate([curve.x, curve.x[::-1]])
            band_y = np.concatenate([curve.y + curve.std, (curve.y - curve.std)[::-1]])
            fig.add_trace(
                go.Scatter(
                    x=band_x,
                    y=band_y,
                    fill="toself",
                    fillcolor=css_color(i, 0.2),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    name=f"{curve.label} ± std",
                )
            )
        fig.add_trace(
            go.Scatter(x=curve.x, y=curve.y, mode="lines", name=curve.label, line={"color": css_color(i)})
        )
    fig.update_layout(title=title, xaxis_title=x_label, yaxis_title=y_label, template="plotly_white")
    return fig


def save_scatter(
    groups: dict[str, tuple[pd.Series, pd.Series]],
    stem: Path,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool,
) -> None:
    """``stem.png`` and ``stem.html``: the (x, y) points of each group in its own colour."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = new_png_figure()
    plotly_fig = go.Figure()
    for i, (label, (x, y)) in enumerate(groups.items()):
        ax.scatter(x, y, label=label, color=color(i), s=28, alpha=0.85)
        plotly_fig.add_trace(
            go.Scatter(x=list(x), y=list(y), mode="markers", name=label, marker={"color": css_color(i)})
        )
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    if log_x:  # setting a linear scale would drop the ticks of categorical values
        ax.set_xscale("log")
    finish_png(fig, ax, stem.with_name(f"{stem.name}.png"))
    plotly_fig.update_layout(
        title=title,
        xaxis={"title": x_label, "type": "log" if log_x else "-"},
        yaxis_title=y_label,
        template="plotly_white",
    )
    plotly_fig.write_html(stem.with_name(f"{stem.name}.html"), include_plotlyjs="cdn")
