"""The ``sparsegat bench --plot`` figure (matplotlib, imported only when drawing).

Layout: one column per operation; the top row gives the median time, the bottom row
the speed-up against the run's baseline. Synthetic graph families measured at
several sizes are lines against the number of edges; graph files (or a single size)
are grouped bars, one group per graph, named by the file's stem. Colour tells the
backend, line style (or hatching) the score, dtype or shape where those vary. The
legends sit to the right of the panels, the machine, the timing protocol and a
busy-machine warning in a caption underneath.

:mod:`sparsegat.bench.plot_data` decides what is drawn; this module only draws.
A saved JSON document can be drawn again::

    python -m sparsegat.bench.plot bench.json bench.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from . import plot_data
from .plot_data import Series

if TYPE_CHECKING:  # matplotlib is optional: imported inside the drawing functions only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BACKEND_COLORS = {"numpy": "tab:blue", "numba": "tab:orange", "cupy": "tab:green", "torch": "tab:brown",
                  "pyg": "tab:red", "pyg-cuda": "tab:purple", "jax": "tab:olive", "jax-pure": "tab:cyan"}
_EXTRA_COLORS = ("tab:pink", "tab:gray", "black")
#: (line style, marker) per style index of a line panel; hatching per style index of a bar panel.
LINE_STYLES = (("-", "o"), ("--", "s"), (":", "D"), ("-.", "^"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 3)), "P"))
HATCHES = ("", "//", "..", "xx", "\\\\", "oo")
_COLUMN_WIDTH_IN = 4.3
_LEGEND_WIDTH_IN = 2.2
_TIME_ROW_IN = 3.2
_SPEEDUP_ROW_IN = 2.5
_CAPTION_FONT_PT = 8.0


def backend_color(backend: str) -> str:
    """The backend's colour (a fixed one for the known backends)."""
    if backend in BACKEND_COLORS:
        return BACKEND_COLORS[backend]
    return _EXTRA_COLORS[sum(map(ord, backend)) % len(_EXTRA_COLORS)]


# ---------------------------------------------------------------------------- what the figure holds


@dataclass
class Layout:
    """Everything the figure shows, decided before anything is drawn.

    Attributes
    ----------
    ops
        The operations, one column each.
    panels
        The series of each operation.
    sweep
        True when some series is a line: edges on a log x axis; otherwise grouped bars.
    styles
        Style label -> style index (line style and marker, or hatching).
    baseline
        The backend the speed-ups divide by; None when the run has none.
    with_speedup
        True when some measurement has a speed-up (the baseline ran).
    """

    ops: list[str]
    panels: dict[str, list[Series]]
    sweep: bool
    styles: dict[str, int]
    baseline: str | None
    with_speedup: bool

    def style_of(self, s: Series) -> int:
        """The style index of a series (0 when nothing but the backend tells series apart)."""
        return self.styles.get(style_label(s, self), 0)


def style_label(s: Series, layout: Layout) -> str:
    """What a series' line style (or hatching) stands for; ``""`` when nothing."""
    groups = {x.group for panel in layout.panels.values() for x in panel}
    # On a line panel the family is part of the style; on a bar panel the graph is the x category.
    group = s.group if layout.sweep and len(groups) > 1 else ""
    return " ".join(p for p in (group, s.variant) if p)


def plan_layout(results: list[dict[str, Any]], graphs: list[dict[str, Any]],
                baseline: str | None = None) -> Layout:
    """Decide the figure's columns, series, mode, styles and baseline from a run's records.

    Parameters
    ----------
    results
        Measurement records (``results`` of the JSON document).
    graphs
        Graph descriptions (``graphs`` of the JSON document).
    baseline
        The backend the speed-ups divide by; by default the one the records carry.

    Returns
    -------
    Layout

    Raises
    ------
    ValueError
        When no measurement succeeded.
    """
    ops = plot_data.plotted_ops(results)
    if not ops:
        raise ValueError("nothing to plot: no measurement succeeded")
    panels = {op: plot_data.panel_series(results, graphs, op) for op in ops}
    sweep = any(s.is_line for panel in panels.values() for s in panel)
    layout = Layout(ops, panels, sweep, {}, baseline or plot_data.results_baseline(results),
                    any(r.get("speedup") is not None for r in results if r["status"] == "ok"))
    labels = sorted({style_label(s, layout) for panel in panels.values() for s in panel} - {""})
    layout.styles = {label: i for i, label in enumerate(labels)}
    return layout


# ---------------------------------------------------------------------------- axes


def _ticks_in_view(lo: float, hi: float, mantissas: Sequence[float]) -> int:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    return sum(lo <= m * 10.0**e <= hi for e in range(first, last + 1) for m in mantissas)


def _minor_subs(lo: float, hi: float) -> tuple[float, ...] | None:
    """Labelled ticks between the decades, the fewest that give at least three labels in view.

    None where three decades or more are in view: their labels suffice.
    """
    if _ticks_in_view(lo, hi, (1.0,)) >= 3:
        return None
    for subs in ((2.0, 5.0), (2.0, 3.0, 5.0), (1.5, 2.0, 3.0, 5.0, 7.0)):
        if _ticks_in_view(lo, hi, (1.0,) + subs) >= 3:
            return subs
    return tuple(float(m) for m in range(2, 10))


def log_axis(axis: Any, lo: float, hi: float, fmt: Callable[[float], str]) -> None:
    """A log axis from ``lo`` to ``hi`` labelled in plain numbers by ``fmt`` (``1 ms``, not ``10^-3``)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    label = FuncFormatter(lambda v, _pos: fmt(v))
    axis.set_major_locator(LogLocator(base=10.0))
    axis.set_major_formatter(label)
    subs = _minor_subs(lo, hi)
    if subs is None:
        axis.set_minor_locator(LogLocator(base=10.0, subs=tuple(range(2, 10))))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_minor_locator(LogLocator(base=10.0, subs=subs))
        axis.set_minor_formatter(label)


def _padded(values: Iterable[float], pad: float) -> tuple[float, float]:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return 1.0 / pad, pad
    return min(vals) / pad, max(vals) * pad


def _speedup_limits(ratios: Iterable[float]) -> tuple[float, float]:
    lo, hi = _padded(list(ratios) + [1.0], 1.35)
    return min(lo, 0.7), max(hi, 1.45)  # 1x never sits on the frame


# ---------------------------------------------------------------------------- line panels


def _draw_time_lines(ax: Axes, series: list[Series], graphs: list[dict[str, Any]], layout: Layout) -> None:
    for s in series:
        x = s.nnz(graphs)
        y = [r["median_s"] for r in s.results]
        err = [[r["median_s"] - r["min_s"] for r in s.results], [r["max_s"] - r["median_s"] for r in s.results]]
        ls, marker = LINE_STYLES[layout.style_of(s) % len(LINE_STYLES)]
        ax.errorbar(x, y, yerr=err, color=backend_color(s.backend), marker=marker, markersize=4.5,
                    linestyle=ls if s.is_line else "none", linewidth=1.4, capsize=2.5, elinewidth=0.9)


def _draw_speedup_lines(ax: Axes, series: list[Series], graphs: list[dict[str, Any]], layout: Layout) -> None:
    for s in series:
        pts = [r for r in s.results if r.get("speedup") is not None]
        if s.backend == layout.baseline or not pts:
            continue
        x = [graphs[r["graph_index"]]["nnz"] for r in pts]
        ls, marker = LINE_STYLES[layout.style_of(s) % len(LINE_STYLES)]
        ax.plot(x, [r["speedup"] for r in pts], color=backend_color(s.backend), marker=marker, markersize=4.5,
                linestyle=ls if s.is_line else "none", linewidth=1.4)


def _edges_axis(axes: Sequence[Axes], series: list[Series], graphs: list[dict[str, Any]]) -> None:
    lo, hi = _padded((n for s in series for n in s.nnz(graphs)), 1.4)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        log_axis(ax.xaxis, lo, hi, plot_data.format_count_tick)
    axes[-1].set_xlabel("edges (nnz)")


# ---------------------------------------------------------------------------- bar panels


def _bar_slots(series: list[Series], layout: Layout, skip: str | None = None) -> list[tuple[str, int]]:
    """The (backend, style) bars of each graph's group, in legend order."""
    slots: list[tuple[str, int]] = []
    for s in series:
        slot = (s.backend, layout.style_of(s))
        if s.backend != skip and slot not in slots:
            slots.append(slot)
    return slots


def _bar_positions(series: list[Series], graphs: list[dict[str, Any]], layout: Layout,
                   skip: str | None = None) -> tuple[list[int], list[tuple[str, int]], float]:
    categories = plot_data.panel_graphs(series, graphs)
    slots = _bar_slots(series, layout, skip)
    return categories, slots, 0.8 / max(len(slots), 1)


def _bar(ax: Axes, s: Series, x: float, width: float, bottom: float, top: float, layout: Layout) -> None:
    hatch = HATCHES[layout.style_of(s) % len(HATCHES)]
    ax.bar(x, top - bottom, width=width, bottom=bottom, color=backend_color(s.backend), hatch=hatch or None,
           edgecolor="white" if hatch else backend_color(s.backend), linewidth=0.0 if not hatch else 0.4)


def _draw_time_bars(ax: Axes, series: list[Series], graphs: list[dict[str, Any]], layout: Layout,
                    floor: float) -> None:
    categories, slots, width = _bar_positions(series, graphs, layout)
    for s in series:
        j = slots.index((s.backend, layout.style_of(s)))
        for r in s.results:
            x = categories.index(r["graph_index"]) - 0.4 + (j + 0.5) * width
            _bar(ax, s, x, width, floor, r["median_s"], layout)
            ax.errorbar([x], [r["median_s"]], yerr=[[r["median_s"] - r["min_s"]], [r["max_s"] - r["median_s"]]],
                        color="black", linewidth=0.8, capsize=1.5)


def _draw_speedup_bars(ax: Axes, series: list[Series], graphs: list[dict[str, Any]], layout: Layout) -> None:
    categories, slots, width = _bar_positions(series, graphs, layout, skip=layout.baseline)
    for s in series:
        if s.backend == layout.baseline:
            continue
        j = slots.index((s.backend, layout.style_of(s)))
        for r in s.results:
            if r.get("speedup") is None:
                continue
            x = categories.index(r["graph_index"]) - 0.4 + (j + 0.5) * width
            # Bars grow from 1x: up when faster than the baseline, down when slower.
            _bar(ax, s, x, width, 1.0, r["speedup"], layout)
            if len(slots) * len(categories) <= 16:  # values on the bars while they stay legible
                ax.annotate(f"{r['speedup']:.2g}x", (x, r["speedup"]), xytext=(0, 2 if r["speedup"] >= 1 else -2),
                            textcoords="offset points", ha="center", va="bottom" if r["speedup"] >= 1 else "top",
                            fontsize=6.5)


def _graph_axis(axes: Sequence[Axes], series: list[Series], graphs: list[dict[str, Any]]) -> None:
    categories = plot_data.panel_graphs(series, graphs)
    labels = [f"{plot_data.graph_label(graphs[i])}\n{plot_data.format_count_tick(graphs[i]['nnz'])} edges"
              for i in categories]
    for ax in axes:
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(labels if ax is axes[-1] else [""] * len(labels), fontsize="small")
        ax.set_xlim(-0.5, len(categories) - 0.5)
        ax.tick_params(axis="x", length=0)


# ---------------------------------------------------------------------------- one column


def _time_limits(series: list[Series]) -> tuple[float, float]:
    return _padded([v for s in series for r in s.results for v in (r["min_s"], r["max_s"])], 1.6)


def draw_column(time_ax: Axes, speed_ax: Axes | None, op: str, graphs: list[dict[str, Any]],
                layout: Layout) -> None:
    """Draw one operation: time on ``time_ax``, speed-up on ``speed_ax`` (when the run has a baseline)."""
    series = layout.panels[op]
    lo, hi = _time_limits(series)
    if layout.sweep:
        _draw_time_lines(time_ax, series, graphs, layout)
    else:
        _draw_time_bars(time_ax, series, graphs, layout, floor=lo)
    time_ax.set_yscale("log")
    time_ax.set_ylim(lo, hi)
    log_axis(time_ax.yaxis, lo, hi, plot_data.format_seconds_tick)
    time_ax.set_title(f"{op}: median time", fontsize="medium")
    time_ax.grid(True, which="major", axis="y", alpha=0.35)
    time_ax.grid(True, which="minor", axis="y", alpha=0.12)
    axes = [time_ax]
    if speed_ax is not None:
        ratios = [r["speedup"] for s in series if s.backend != layout.baseline
                  for r in s.results if r.get("speedup") is not None]
        if layout.sweep:
            _draw_speedup_lines(speed_ax, series, graphs, layout)
        else:
            _draw_speedup_bars(speed_ax, series, graphs, layout)
        slo, shi = _speedup_limits(ratios)
        speed_ax.set_yscale("log")
        speed_ax.set_ylim(slo, shi)
        log_axis(speed_ax.yaxis, slo, shi, plot_data.format_speedup_tick)
        speed_ax.axhline(1.0, color=backend_color(layout.baseline or ""), linewidth=1.2, linestyle="-", zorder=0.5)
        speed_ax.set_title(plot_data.speedup_title(op, layout.baseline), fontsize="medium")
        speed_ax.grid(True, which="both", axis="y", alpha=0.25)
        if not ratios:
            speed_ax.text(0.5, 0.5, f"{layout.baseline} did not run {op}", transform=speed_ax.transAxes,
                          ha="center", va="center", fontsize="small", color="0.4")
        axes.append(speed_ax)
    if layout.sweep:
        _edges_axis(axes, series, graphs)
        for ax in axes:
            ax.grid(True, which="major", axis="x", alpha=0.35)
    else:
        _graph_axis(axes, series, graphs)


# ---------------------------------------------------------------------------- legends and caption


def _legend_handles(layout: Layout) -> tuple[list[Any], list[Any]]:
    """Handles of the backend legend (colours) and of the style legend (what lines/hatches mean)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    backends = []
    for s in (s for op in layout.ops for s in layout.panels[op]):
        if s.backend not in backends:
            backends.append(s.backend)
    backends.sort(key=lambda b: (plot_data.BACKEND_ORDER.index(b) if b in plot_data.BACKEND_ORDER else 99, b))
    colour = [Patch(facecolor=backend_color(b), label=f"{b} (baseline)" if b == layout.baseline else b)
              for b in backends]
    styles = []
    for label, i in sorted(layout.styles.items(), key=lambda kv: kv[1]):
        if layout.sweep:
            ls, marker = LINE_STYLES[i % len(LINE_STYLES)]
            styles.append(Line2D([], [], color="0.25", linestyle=ls, marker=marker, markersize=4.5, label=label))
        else:
            styles.append(Patch(facecolor="0.55", edgecolor="white", hatch=HATCHES[i % len(HATCHES)] or None,
                                label=label))
    return colour, styles


def _add_legends(grid: list[list[Axes]], layout: Layout) -> list[Any]:
    """The backend legend (and the style legend) to the right of the last column, outside the data."""
    colour, styles = _legend_handles(layout)
    top_right = grid[0][-1]
    legends = [top_right.legend(handles=colour, title="backend", loc="upper left", bbox_to_anchor=(1.03, 1.0),
                                borderaxespad=0.0, fontsize="small", title_fontsize="small", frameon=False)]
    if len(styles) > 1:
        host = grid[-1][-1] if len(grid) > 1 else top_right
        if host is top_right:  # an axes draws one legend: keep the first as a plain artist
            top_right.add_artist(legends[0])
            legends[0].set_clip_on(False)  # unclipped, so that the layout makes room for it
        anchor, loc = ((1.03, 1.0), "upper left") if len(grid) > 1 else ((1.03, 0.0), "lower left")
        kind = "line style" if layout.sweep else "hatching"
        legends.append(host.legend(handles=styles, title=kind, loc=loc, bbox_to_anchor=anchor, borderaxespad=0.0,
                                   fontsize="small", title_fontsize="small", frameon=False))
    return legends


def _wrap(lines: list[str], width_in: float) -> list[str]:
    chars = max(40, int(width_in * 72 / (_CAPTION_FONT_PT * 0.52)))  # average glyph width of DejaVu Sans
    return [w for line in lines for w in textwrap.wrap(line, chars)]


def _add_caption(fig: Figure, lines: list[str], warning: str | None) -> None:
    """The caption under the panels; the layout engine has already kept its height free."""
    width, height = fig.get_size_inches()
    step = _CAPTION_FONT_PT * 1.35 / 72 / height
    y = 0.008 + step * (len(_wrap(lines, width)) + len(_wrap([warning] if warning else [], width)))
    for text, colour, weight in [(t, "0.2", "normal") for t in _wrap(lines, width)] + \
                                [(t, "tab:red", "bold") for t in _wrap([warning] if warning else [], width)]:
        y -= step
        fig.text(0.01, y, text, fontsize=_CAPTION_FONT_PT, color=colour, weight=weight, ha="left", va="bottom")


# ---------------------------------------------------------------------------- the figure


def build_figure(results: list[dict[str, Any]], graphs: list[dict[str, Any]],
                 machine: dict[str, Any] | None = None, baseline: str | None = None,
                 notes: Iterable[str] = ()) -> Figure:
    """The figure of a bench run (Agg canvas, nothing shown or saved).

    Parameters
    ----------
    results
        Measurement records (``results`` of the JSON document).
    graphs
        Graph descriptions (``graphs`` of the JSON document).
    machine
        The ``machine`` section: CPU, GPU, threads and loads for the caption.
    baseline
        The backend the speed-ups divide by (default: the one the records carry).
    notes
        The run's notes (a busy machine noted there is warned about).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layout = plan_layout(results, graphs, baseline)
    lines, warning = plot_data.caption_lines(machine or {}, results, notes)
    if not layout.with_speedup:
        lines.append(f"No speed-up panels: the baseline ({layout.baseline or 'none'}) has no successful "
                     "measurement in this run.")
    ncols = len(layout.ops)
    width = _COLUMN_WIDTH_IN * ncols + _LEGEND_WIDTH_IN
    caption_in = (len(_wrap(lines, width)) + len(_wrap([warning] if warning else [], width))) \
        * _CAPTION_FONT_PT * 1.35 / 72 + 0.15
    rows = [_TIME_ROW_IN] + ([_SPEEDUP_ROW_IN] if layout.with_speedup else [])
    height = sum(rows) + 0.9 + caption_in + (0.25 if not layout.sweep else 0.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(rect=(0.0, caption_in / height, 1.0, 1.0 - caption_in / height))
    grid = fig.subplots(len(rows), ncols, squeeze=False, sharex="col",
                        gridspec_kw={"height_ratios": rows})
    for j, op in enumerate(layout.ops):
        draw_column(grid[0][j], grid[1][j] if layout.with_speedup else None, op, graphs, layout)
    grid[0][0].set_ylabel("median time")
    if layout.with_speedup:
        grid[1][0].set_ylabel("speed-up (higher = faster)")
    _add_legends([list(row) for row in grid], layout)
    title_chars = int(width * 72 / (10.0 * 0.55))  # "medium" is 10 pt
    fig.suptitle("\n".join(textwrap.wrap(plot_data.figure_title(results, graphs), title_chars)), fontsize="medium")
    _add_caption(fig, lines, warning)
    return fig


def plot(results: list[dict[str, Any]], graphs: list[dict[str, Any]], path: str,
         machine: dict[str, Any] | None = None, baseline: str | None = None, notes: Iterable[str] = ()) -> None:
    """Draw the figure of a bench run into ``path`` (``.png``, ``.pdf`` or ``.svg``).

    Parameters are those of :func:`build_figure`.
    """
    build_figure(results, graphs, machine, baseline, notes).savefig(path, dpi=130)


def plot_document(document: dict[str, Any], path: str) -> None:
    """Draw a saved ``sparsegat bench --json`` document into ``path``."""
    plot(document["results"], document["graphs"], path, machine=document.get("machine"),
         baseline=document.get("baseline"), notes=document.get("notes") or ())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sparsegat.bench.plot BENCH.json OUT.png``: draw a saved run again."""
    ap = argparse.ArgumentParser(prog="python -m sparsegat.bench.plot",
                                 description="Draw the plot of a saved `sparsegat bench --json` file.")
    ap.add_argument("json", help="a document written by sparsegat bench --json")
    ap.add_argument("out", help="the figure to write (.png, .pdf or .svg)")
    args = ap.parse_args(argv)
    try:
        with open(args.json, encoding="utf-8") as f:
            plot_document(json.load(f), args.out)
    except (OSError, ValueError, KeyError) as exc:
        print(f"python -m sparsegat.bench.plot: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
