"""What the ``sparsegat bench`` plot shows, decided without matplotlib.

Which measurements form a line (a real size sweep of one synthetic graph family)
and which stay single points (graph files, or one size only), the names in
legends and titles, the tick labels and the caption. :mod:`sparsegat.bench.plot`
draws what this module decides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from .busy import busy_warning, run_loads

#: Backends in legend order: the reference first, then sparsegat's, then its peers.
BACKEND_ORDER = ("numpy", "numba", "cupy", "torch", "pyg", "pyg-cuda", "jax", "jax-pure")
OPS_ORDER = ("forward", "backward", "layer")
#: Settings that split one backend's measurements into separately styled series.
VARIANT_DIMS = ("score", "dtype", "heads", "d", "dv", "in_dim")
_VARIANT_NAMES = {"heads": "H", "d": "D", "dv": "Dv", "in_dim": "in"}
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")


# ---------------------------------------------------------------------------- graphs


def is_file_graph(graph: dict[str, Any]) -> bool:
    """True for a graph read from ``--graph FILE`` (its family reads ``file:<format>``)."""
    return graph.get("file") is not None or str(graph.get("family", "")).startswith("file:")


def graph_label(graph: dict[str, Any]) -> str:
    """The name a reader knows the graph by: the file's stem, or the synthetic graph's name."""
    if not is_file_graph(graph):
        return str(graph["name"])
    name = os.path.basename(str(graph.get("file") or graph["name"]))
    for suffix in _COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return os.path.splitext(name)[0] or name


# ---------------------------------------------------------------------------- series


@dataclass
class Series:
    """One backend's measurements of one operation that belong together.

    Attributes
    ----------
    backend
        The backend's name (the colour).
    group
        The synthetic family (with its degree when lines are per degree), or the file
        graph's stem: what a line never crosses.
    variant
        The settings that vary within the operation (score, dtype, ...); ``""`` when none do.
    results
        The measurement records, by increasing number of edges.
    is_line
        True only for a real size sweep: a synthetic family measured at two or more sizes.
    """

    backend: str
    group: str
    variant: str
    results: list[dict[str, Any]] = field(default_factory=list)
    is_line: bool = False

    def nnz(self, graphs: list[dict[str, Any]]) -> list[int]:
        """Edges of each point's graph."""
        return [int(graphs[r["graph_index"]]["nnz"]) for r in self.results]


def _variant_label(config: dict[str, Any], varying: Iterable[str]) -> str:
    parts = []
    for dim in varying:
        value = config.get(dim)
        if value is None:
            continue
        parts.append(str(value) if dim in ("score", "dtype") else f"{_VARIANT_NAMES[dim]}={value}")
    return " ".join(parts)


def _split_lines_by_degree(rs: list[dict[str, Any]], graphs: list[dict[str, Any]]) -> bool:
    """True when some family varies both nodes and degree: then each degree is its own line.

    With one node count, the degrees themselves are the size sweep along the edges axis.
    """
    by_family: dict[str, tuple[set, set]] = {}
    for r in rs:
        g = graphs[r["graph_index"]]
        if is_file_graph(g):
            continue
        nodes, degrees = by_family.setdefault(g["family"], (set(), set()))
        nodes.add(g.get("requested", {}).get("nodes", g.get("n_dst")))
        degrees.add(g.get("requested", {}).get("degree"))
    return any(len(nodes) > 1 and len(degrees) > 1 for nodes, degrees in by_family.values())


def _backend_rank(backend: str) -> int:
    return BACKEND_ORDER.index(backend) if backend in BACKEND_ORDER else len(BACKEND_ORDER)


def panel_series(results: list[dict[str, Any]], graphs: list[dict[str, Any]], op: str) -> list[Series]:
    """The series of one operation's panel, in legend order (backend, group, variant).

    Parameters
    ----------
    results
        Measurement records of a bench run (only ``status == "ok"`` ones are used).
    graphs
        The run's graph descriptions (``graphs`` of the JSON document).
    op
        ``forward``, ``backward`` or ``layer``.

    Returns
    -------
    list of Series
        A series is a line only where its graphs are one synthetic family at two or more
        sizes; every graph file is a series of its own, a single point.
    """
    rs = [r for r in results if r["status"] == "ok" and r["config"]["op"] == op]
    varying = [d for d in VARIANT_DIMS if len({r["config"].get(d) for r in rs}) > 1]
    per_degree = _split_lines_by_degree(rs, graphs)
    series: dict[tuple[str, str, str], Series] = {}
    for r in rs:
        g = graphs[r["graph_index"]]
        if is_file_graph(g):
            group = graph_label(g)
        else:
            degree = g.get("requested", {}).get("degree")
            group = g["family"] + (f" deg {degree}" if per_degree and degree is not None else "")
        key = (r["backend"], group, _variant_label(r["config"], varying))
        series.setdefault(key, Series(*key)).results.append(r)
    for s in series.values():
        s.results.sort(key=lambda r: graphs[r["graph_index"]]["nnz"])
        graph_ids = {r["graph_index"] for r in s.results}
        s.is_line = len(graph_ids) > 1 and not any(is_file_graph(graphs[i]) for i in graph_ids)
    return sorted(series.values(), key=lambda s: (_backend_rank(s.backend), s.backend, s.group, s.variant))


def plotted_ops(results: list[dict[str, Any]]) -> list[str]:
    """The operations with at least one successful measurement, in run order."""
    ops = {r["config"]["op"] for r in results if r["status"] == "ok"}
    return [op for op in OPS_ORDER if op in ops] + sorted(ops - set(OPS_ORDER))


def panel_graphs(series: list[Series], graphs: list[dict[str, Any]]) -> list[int]:
    """Indices of the graphs a panel shows, by increasing edges (the categories of a bar panel)."""
    ids = {r["graph_index"] for s in series for r in s.results}
    return sorted(ids, key=lambda i: (graphs[i]["nnz"], graph_label(graphs[i])))


# ---------------------------------------------------------------------------- tick labels


def _rounded(value: float) -> float:
    """Three significant digits, so that 0.0009999 counts as 1e-3 when choosing its unit."""
    return float(f"{value:.3g}")


def format_seconds_tick(seconds: float) -> str:
    """A time axis label in plain units: ``1 ms``, ``10 ms``, ``100 ms``, ``1 s``, ``500 µs``."""
    v = _rounded(seconds)
    if v <= 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if v >= scale:
            return f"{_rounded(v / scale):g} {unit}"
    return f"{_rounded(v / 1e-9):g} ns"


def format_count_tick(count: float) -> str:
    """An edge-count axis label: ``1k``, ``16k``, ``1M``, ``2.5M``."""
    v = _rounded(count)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{_rounded(v / scale):g}{unit}"
    return f"{v:g}"


def format_speedup_tick(ratio: float) -> str:
    """A speed-up axis label: ``0.5x``, ``1x``, ``2x``, ``10x``."""
    return f"{_rounded(ratio):g}x"


# ---------------------------------------------------------------------------- titles and caption


def _fmt_range(values: list[int]) -> str:
    values = sorted(set(values))
    if len(values) == 1:
        return format_count_tick(values[0])
    return f"{format_count_tick(values[0])}-{format_count_tick(values[-1])}"


def figure_title(results: list[dict[str, Any]], graphs: list[dict[str, Any]]) -> str:
    """The graphs and the settings every measurement shares, e.g. ``uniform graphs, 1k-10k nodes ...``."""
    ok = [r for r in results if r["status"] == "ok"]
    used = sorted({r["graph_index"] for r in ok})
    files = [graphs[i] for i in used if is_file_graph(graphs[i])]
    synthetic = [graphs[i] for i in used if not is_file_graph(graphs[i])]
    parts = []
    if files:
        parts.append(("graph " if len(files) == 1 else "graphs ") + ", ".join(graph_label(g) for g in files))
    if synthetic:
        families = sorted({g["family"] for g in synthetic})
        nodes = [g.get("requested", {}).get("nodes", g["n_dst"]) for g in synthetic]
        degrees = [g.get("requested", {}).get("degree") for g in synthetic]
        text = f"{'/'.join(families)} graphs, {_fmt_range(nodes)} nodes"
        if all(d is not None for d in degrees):
            text += f", degree {_fmt_range(degrees)}"
        parts.append(text)
    shared = []
    for dim, name in (("heads", "heads"), ("dv", "features per head")):
        values = {r["config"].get(dim) for r in ok}
        if len(values) == 1 and None not in values:
            shared.append(f"{values.pop()} {name}")
    dtypes = {r["config"].get("dtype") for r in ok}
    if len(dtypes) == 1:
        shared.append(str(dtypes.pop()))
    return "sparsegat bench: " + "; ".join(parts + ([", ".join(shared)] if shared else []))


def _machine_line(machine: dict[str, Any]) -> str:
    threads = machine.get("threads") or {}
    cpus = threads.get("usable_cpus") or threads.get("logical_cpus")
    text = f"Machine: {machine.get('cpu_model') or 'unknown CPU'}" + (f", {cpus} CPUs" if cpus else "")
    pools = [f"{lib} {threads[lib]}" for lib in ("numba", "torch") if threads.get(lib) is not None]
    if pools:
        text += f" (threads: {', '.join(pools)})"
    gpus = [g["name"] for g in machine.get("gpus") or [] if "name" in g]
    if gpus:
        text += "; GPU: " + (gpus[0] if len(set(gpus)) == 1 and len(gpus) == 1 else f"{len(gpus)} x {gpus[0]}")
    elif "gpus" in machine:
        text += "; no GPU"
    versions = machine.get("versions") or {}
    libs = [f"{name} {versions[name]}" for name in ("sparsegat", "numpy", "numba", "torch", "jax")
            if versions.get(name)]
    if machine.get("python"):
        libs.insert(0, f"Python {machine['python']}")
    return text + (f". {', '.join(libs)}" if libs else "")


def _timing_line(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    ok = [r for r in results if r["status"] == "ok"]
    repeats = sorted({int(r["repeat"]) for r in ok if r.get("repeat") is not None})
    counts = "the" if not repeats else str(repeats[0]) if len(repeats) == 1 else f"{repeats[0]}-{repeats[-1]}"
    text = f"Median of {counts} timed calls; error bars: min to max."
    start, peak = run_loads(machine, results)
    if start is not None or peak is not None:
        cpus = (machine.get("threads") or {}).get("usable_cpus")
        loads = []
        if start is not None:
            loads.append(f"{start:.2f} at the start")
        if peak is not None:
            loads.append(f"up to {peak:.2f} during the run")
        text += f" 1-minute load average {' and '.join(loads)}" + (f" on {cpus} CPUs." if cpus else ".")
    return text


def caption_lines(machine: dict[str, Any], results: list[dict[str, Any]],
                  notes: Iterable[str] = ()) -> tuple[list[str], str | None]:
    """The caption under the plot: the machine and how time was taken, and a busy warning.

    Parameters
    ----------
    machine
        The ``machine`` section of a bench document.
    results
        The measurement records.
    notes
        The run's notes (see :func:`sparsegat.bench.busy.busy_warning`).

    Returns
    -------
    (lines, warning)
        The plain caption lines, and the warning (drawn in red) or None on a quiet machine.
    """
    warning = busy_warning(machine, results, notes)
    return [_machine_line(machine), _timing_line(results, machine)], (
        None if warning is None else f"WARNING: {warning}")


def speedup_title(op: str, baseline: str | None) -> str:
    """The speed-up panel's title: which backend every ratio divides by."""
    return f"{op}: speed-up vs {baseline or 'the baseline'} (baseline = 1x)"


def results_baseline(results: list[dict[str, Any]]) -> str | None:
    """The baseline the run's speed-ups divide by (each record carries it)."""
    return next((r["baseline"] for r in results if r.get("baseline")), None)
