"""The ``sparsegat bench --plot`` figure: what is a line, names, ticks, caption, legends.

The logic tests run on hand-made result records (no benchmark runs); the drawing
tests need matplotlib (the ``bench`` extra) and skip without it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sparsegat.bench import busy, plot_data

# ---------------------------------------------------------------------------- records


def synthetic(name: str, nnz: int, nodes: int, degree: int = 16, family: str = "uniform") -> dict[str, Any]:
    return {"name": name, "family": family, "file": None, "requested": {"nodes": nodes, "degree": degree},
            "n_dst": nodes, "n_src": nodes, "nnz": nnz}


def file_graph(path: str, nnz: int, kind: str = "mtx") -> dict[str, Any]:
    return {"name": path.rsplit("/", 1)[-1], "family": f"file:{kind}", "file": path, "requested": {},
            "n_dst": 100, "n_src": 100, "nnz": nnz}


def record(gi: int, backend: str, op: str = "forward", median: float = 1e-3, score: str = "additive",
           speedup: float | None = None, load: float | None = 0.2, baseline: str = "numpy") -> dict[str, Any]:
    config = {"op": op, "heads": 4, "d": None if score == "additive" else 32, "dv": 32, "score": score,
              "dtype": "float32", "in_dim": 64 if op == "layer" else None}
    return {"graph_index": gi, "backend": backend, "config": config, "status": "ok", "median_s": median,
            "min_s": median * 0.9, "max_s": median * 1.2, "repeat": 5, "speedup": speedup, "baseline": baseline,
            "load_average_1min": load}


def sweep_run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """numpy and numba, forward and layer, on uniform graphs of 1k and 10k nodes, two scores for forward."""
    graphs = [synthetic("uniform-n1000-d16", 16_000, 1000), synthetic("uniform-n10000-d16", 160_000, 10_000)]
    results = []
    for gi, scale in ((1, 10.0), (0, 1.0)):  # the larger graph first: series must come out sorted by edges
        for score in ("additive", "dot"):
            results.append(record(gi, "numpy", median=3e-3 * scale, score=score, speedup=1.0))
            results.append(record(gi, "numba", median=1e-3 * scale, score=score, speedup=3.0))
        results.append(record(gi, "numpy", "layer", median=1e-2 * scale, speedup=1.0))
        results.append(record(gi, "numba", "layer", median=8e-3 * scale, speedup=1.25))
    return results, graphs


def files_run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """numpy, numba and pyg, forward, on two graph files."""
    graphs = [file_graph("/data/cora.npz", 10_556, "npz"), file_graph("/data/web-Google.mtx.gz", 40_000)]
    results = [record(gi, b, median=m * (gi + 1), speedup=s)
               for gi in (0, 1) for b, m, s in (("numpy", 4e-3, 1.0), ("numba", 1e-3, 4.0), ("pyg", 8e-3, 0.5))]
    return results, graphs


# ---------------------------------------------------------------------------- lines and points


def test_a_size_sweep_of_one_family_is_one_line_per_backend_and_variant():
    results, graphs = sweep_run()
    series = plot_data.panel_series(results, graphs, "forward")
    assert [(s.backend, s.group, s.variant) for s in series] == [
        ("numpy", "uniform", "additive"), ("numpy", "uniform", "dot D=32"),
        ("numba", "uniform", "additive"), ("numba", "uniform", "dot D=32")]
    assert all(s.is_line for s in series)
    assert all(s.nnz(graphs) == [16_000, 160_000] for s in series)
    layer = plot_data.panel_series(results, graphs, "layer")
    assert [(s.backend, s.variant, s.is_line) for s in layer] == [("numpy", "", True), ("numba", "", True)]


def test_graph_files_are_points_named_by_their_stems_never_joined():
    results, graphs = files_run()
    series = plot_data.panel_series(results, graphs, "forward")
    assert len(series) == 6 and not any(s.is_line for s in series)
    assert {s.group for s in series} == {"cora", "web-Google"}
    assert all(len(s.results) == 1 for s in series)
    assert plot_data.panel_graphs(series, graphs) == [0, 1]  # by edges


def test_one_size_only_is_not_a_line():
    graphs = [synthetic("uniform-n1000-d16", 16_000, 1000), synthetic("powerlaw-n1000-d16", 16_000, 1000,
                                                                      family="powerlaw")]
    results = [record(gi, "numba") for gi in (0, 1)]
    series = plot_data.panel_series(results, graphs, "forward")
    assert [(s.group, s.is_line) for s in series] == [("powerlaw", False), ("uniform", False)]


def test_degrees_are_the_sweep_with_one_node_count_and_separate_lines_with_several():
    one_n = [synthetic("a", 80_000, 10_000, 8), synthetic("b", 320_000, 10_000, 32)]
    series = plot_data.panel_series([record(0, "numba"), record(1, "numba")], one_n, "forward")
    assert [(s.group, s.is_line, len(s.results)) for s in series] == [("uniform", True, 2)]
    grid = [synthetic(f"g{n}-{k}", n * k, n, k) for n in (1000, 10_000) for k in (8, 32)]
    series = plot_data.panel_series([record(i, "numba") for i in range(4)], grid, "forward")
    assert [(s.group, s.is_line, len(s.results)) for s in series] == [
        ("uniform deg 32", True, 2), ("uniform deg 8", True, 2)]


def test_graph_label_is_the_file_stem():
    assert plot_data.graph_label(file_graph("/x/y/cora.npz", 1, "npz")) == "cora"
    assert plot_data.graph_label(file_graph("/x/web-Google.mtx.gz", 1)) == "web-Google"
    assert plot_data.graph_label(file_graph("edges.txt", 1, "edgelist")) == "edges"
    assert plot_data.graph_label(synthetic("uniform-n1000-d16", 1, 1000)) == "uniform-n1000-d16"


def test_titles_name_the_graphs_and_the_baseline():
    results, graphs = files_run()
    assert "graphs cora, web-Google" in plot_data.figure_title(results, graphs)
    assert "file:" not in plot_data.figure_title(results, graphs)
    results, graphs = sweep_run()
    assert "uniform graphs, 1k-10k nodes, degree 16" in plot_data.figure_title(results, graphs)
    assert plot_data.results_baseline(results) == "numpy"
    assert "vs pyg" in plot_data.speedup_title("forward", "pyg")


# ---------------------------------------------------------------------------- tick labels


@pytest.mark.parametrize("seconds, text", [
    (1e-3, "1 ms"), (1e-2, "10 ms"), (1e-1, "100 ms"), (1.0, "1 s"), (10.0, "10 s"),
    (2e-3, "2 ms"), (3e-2, "30 ms"), (5e-4, "500 µs"), (1e-6, "1 µs"), (0.00099999, "1 ms"), (0.25, "250 ms"),
])
def test_time_ticks_read_plainly(seconds, text):
    assert plot_data.format_seconds_tick(seconds) == text


def test_count_and_speedup_ticks_read_plainly():
    assert [plot_data.format_count_tick(n) for n in (500, 1e3, 1e4, 1.6e4, 1e5, 1e6, 2.5e6)] == [
        "500", "1k", "10k", "16k", "100k", "1M", "2.5M"]
    assert [plot_data.format_speedup_tick(x) for x in (0.1, 0.5, 1.0, 2.0, 10.0)] == [
        "0.1x", "0.5x", "1x", "2x", "10x"]


# ---------------------------------------------------------------------------- caption


MACHINE = {"cpu_model": "AMD EPYC 9454", "threads": {"usable_cpus": 2, "numba": 2, "torch": 2},
           "gpus": [{"name": "NVIDIA H200"}], "python": "3.11.7", "versions": {"sparsegat": "0.1.0"},
           "load_average_start": [0.3, 0.5, 0.6], "load_average": [1.8, 1.0, 0.7]}


def test_caption_names_the_machine_and_has_no_warning_when_quiet():
    results, _ = sweep_run()
    lines, warning = plot_data.caption_lines(MACHINE, results)
    assert warning is None
    text = " ".join(lines)
    for part in ("AMD EPYC 9454", "2 CPUs", "numba 2", "torch 2", "GPU: NVIDIA H200", "Median of 5 timed calls",
                 "0.30 at the start", "up to 1.80 during the run"):
        assert part in text


@pytest.mark.parametrize("start, during, end, where", [
    (1.6, 0.2, 1.0, "1.6 at the start"),      # before: more than half of 2 CPUs (+0.5) taken
    (0.3, 3.5, 1.0, "up to 3.5 during"),      # during: more than CPUs + 1
    (0.3, 0.2, 3.2, "up to 3.2 during"),      # after: the end-of-run load counts too
])
def test_caption_warns_of_a_busy_machine(start, during, end, where):
    results, _ = sweep_run()
    for r in results:
        r["load_average_1min"] = during
    machine = dict(MACHINE, load_average_start=[start, 1, 1], load_average=[end, 1, 1])
    _, warning = plot_data.caption_lines(machine, results)
    assert warning is not None and warning.startswith("WARNING: the machine was busy") and where in warning


def test_caption_repeats_the_runs_own_busy_note():
    results, _ = sweep_run()
    note = "the machine got busy during the run (1-minute load average up to 1.7 on 2 CPUs): x; see the JSON"
    _, warning = plot_data.caption_lines(MACHINE, results, notes=["backend cupy skipped", note])
    assert warning == "WARNING: the machine got busy during the run (1-minute load average up to 1.7 on 2 CPUs): x"


def test_busy_rules():
    assert busy.busy_at_start(1.6, 2) and not busy.busy_at_start(1.4, 2)
    assert busy.busy_during_run(3.1, 2) and not busy.busy_during_run(2.9, 2)
    assert busy.run_loads({}, [{"load_average_1min": None}]) == (None, None)


# ---------------------------------------------------------------------------- the drawing (matplotlib)


def _drawn(results, graphs, machine=MACHINE, notes=()):
    pytest.importorskip("matplotlib")
    from sparsegat.bench.plot import build_figure

    fig = build_figure(results, graphs, machine, notes=notes)
    fig.canvas.draw()
    return fig


def _data_axes(fig):
    return [ax for ax in fig.axes if ax.get_title()]


@pytest.mark.parametrize("with_speedup", [True, False])
def test_legends_lie_outside_every_panel(with_speedup):
    results, graphs = sweep_run()
    if not with_speedup:  # one row of panels: both legends beside its last panel
        results = [dict(r, speedup=None) for r in results]
    fig = _drawn(results, graphs)
    from matplotlib.legend import Legend

    renderer = fig.canvas.get_renderer()
    legends = [x for x in fig.findobj(Legend) if x.get_visible()]
    assert len(legends) == 2  # backends, and line styles (additive / dot)
    assert len(_data_axes(fig)) == (4 if with_speedup else 2)
    assert any("No speed-up panels" in t.get_text() for t in fig.texts) != with_speedup
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and 0 <= box.y0 and box.y1 <= fig.bbox.y1
        for ax in _data_axes(fig):
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    labels = sorted([t.get_text() for t in legend.get_texts()] for legend in legends)
    assert labels == [["additive", "dot D=32"], ["numpy (baseline)", "numba"]]


def test_sweep_panels_draw_lines_and_plain_time_ticks():
    results, graphs = sweep_run()
    fig = _drawn(results, graphs)
    time_ax = next(ax for ax in fig.axes if ax.get_title() == "forward: median time")
    data_lines = [line for line in time_ax.get_lines() if line.get_marker() != "_"]  # not the error bars' caps
    styles = {line.get_linestyle() for line in data_lines}
    assert styles == {"-", "--"}  # additive and dot, each a line across the two sizes
    ticks = [t.get_text() for t in time_ax.get_yticklabels(which="both") if t.get_text()]
    assert "1 ms" in ticks and "10 ms" in ticks
    assert not any("^" in t or "$" in t or "times" in t for t in ticks)
    titles = [ax.get_title() for ax in fig.axes]
    assert "forward: speed-up vs numpy (baseline = 1x)" in titles


def test_file_panels_join_nothing_and_name_the_graphs():
    results, graphs = files_run()
    fig = _drawn(results, graphs)
    for ax in _data_axes(fig):
        # Bars and their error bars only: no line through several graphs (only the 1x line spans the panel).
        drawn = [line for line in ax.get_lines() if line.get_linestyle() != "None"]
        assert all(len(line.get_xdata()) <= 1 or set(line.get_ydata()) == {1.0} for line in drawn)
        assert len(ax.patches) >= 4
    bottom = [ax for ax in _data_axes(fig) if "speed-up" in ax.get_title()][0]
    assert [t.get_text().split("\n")[0] for t in bottom.get_xticklabels()] == ["cora", "web-Google"]
    assert "cora" in fig.get_suptitle() and "file:" not in fig.get_suptitle()


def test_caption_is_drawn_with_the_warning_in_red():
    results, graphs = files_run()
    busy_machine = dict(MACHINE, load_average_start=[1.9, 1, 1])
    fig = _drawn(results, graphs, busy_machine)
    texts = {t.get_text(): t.get_color() for t in fig.texts}
    assert any("AMD EPYC 9454" in t for t in texts)
    warning = [t for t in texts if t.startswith("WARNING")]
    assert warning and texts[warning[0]] == "tab:red"
    quiet = _drawn(results, graphs)
    assert not any(t.get_text().startswith("WARNING") for t in quiet.texts)


def test_replot_a_saved_document(tmp_path):
    pytest.importorskip("matplotlib")
    from sparsegat.bench.plot import main

    results, graphs = files_run()
    doc = tmp_path / "run.json"
    doc.write_text(json.dumps({"results": results, "graphs": graphs, "machine": MACHINE, "baseline": "numpy"}))
    assert main([str(doc), str(tmp_path / "run.png")]) == 0
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "missing.json"), str(tmp_path / "x.png")]) == 1
