"""``sparsegat bench``: graph files, synthetic graphs, sweep parsing, timing, JSON, CLI."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from sparsegat import CSRGraph, attention_forward
from sparsegat.bench import cli, graphs, readers, report, timing
from sparsegat.bench.cli import main

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_PYG = all(importlib.util.find_spec(m) is not None for m in ("torch", "torch_geometric"))

TINY = ["--nodes", "200", "--degree", "4", "--heads", "2", "--features", "4", "--repeat", "1",
        "--warmup", "0", "--backends", "numpy", "--no-pyg", "-q"]


def dense(g: CSRGraph) -> np.ndarray:
    return g.to_scipy().toarray()


# ---------------------------------------------------------------------------- readers: valid files


def test_read_scipy_npz_any_format(tmp_path):
    A = sp.random(30, 50, density=0.1, format="csr", random_state=0)
    for fmt in ("csr", "coo", "csc"):
        path = tmp_path / f"a_{fmt}.npz"
        sp.save_npz(path, A.asformat(fmt))
        bg = readers.read_graph(path)
        assert bg.graph.shape == (30, 50)
        assert bg.graph.nnz == A.nnz
        np.testing.assert_array_equal(dense(bg.graph) != 0, A.toarray() != 0)
        assert bg.family == "file:npz"


def test_read_npz_indptr_indices_layout(tmp_path):
    # The data-set layout (e.g. cora.npz): square, n = len(indptr) - 1; unsorted rows are fine.
    indptr = np.array([0, 2, 3, 3, 5])
    indices = np.array([3, 1, 0, 2, 1])
    path = tmp_path / "g.npz"
    np.savez(path, indptr=indptr, indices=indices, y=np.zeros(4))
    g = readers.read_graph(path).graph
    assert g.shape == (4, 4) and g.nnz == 5
    np.testing.assert_array_equal(g.indices[:2], [1, 3])  # canonicalised
    path2 = tmp_path / "rect.npz"
    np.savez(path2, indptr=indptr, indices=indices, shape=np.array([4, 7]))
    assert readers.read_graph(path2).graph.shape == (4, 7)


def test_read_cora(cora_path):
    g = readers.read_graph(cora_path).graph
    assert g.shape == (2708, 2708) and g.nnz == 10556


def test_read_matrix_market(tmp_path):
    A = sp.random(20, 20, density=0.2, format="coo", random_state=1)
    path = tmp_path / "a.mtx"
    scipy.io.mmwrite(str(path), A)
    g = readers.read_graph(path).graph
    assert g.shape == (20, 20) and g.nnz == A.nnz
    # A symmetric file stores one triangle; both come back.
    S = sp.coo_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float))
    spath = tmp_path / "s.mtx"
    scipy.io.mmwrite(str(spath), S, symmetry="symmetric")
    assert readers.read_graph(spath).graph.nnz == 4


def test_read_edge_list(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("# a comment\n% another\n\n0 1\n1\t2 0.5\n2,0\n0 1\n   3 0  \n")
    bg = readers.read_graph(path)
    g = bg.graph
    assert g.shape == (4, 4)
    assert g.nnz == 4  # the repeated 0 1 is merged
    A = dense(g)
    # line "u v" is the edge u -> v: row v (destination), column u (source)
    assert A[1, 0] and A[2, 1] and A[0, 2] and A[0, 3]
    assert bg.family == "file:edgelist"


def test_symmetrize(tmp_path):
    path = tmp_path / "g.edges"
    path.write_text("0 1\n1 2\n")
    g = readers.read_graph(path, symmetrize=True).graph
    A = dense(g)
    np.testing.assert_array_equal(A, A.T)
    assert g.nnz == 4


# ---------------------------------------------------------------------------- readers: malformed files


def _npz(tmp_path, name="bad.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.arange(3)}, "neither a scipy.sparse matrix"),
    ({"indptr": np.array([0, 2, 1]), "indices": np.array([0, 1])}, "decreases"),
    ({"indptr": np.array([1, 2]), "indices": np.array([0, 1])}, "indptr[0] must be 0"),
    ({"indptr": np.array([0, 3]), "indices": np.array([0])}, "indptr[-1]=3"),
    ({"indptr": np.array([0, 1, 2]), "indices": np.array([0, 5])}, "out of range"),
    ({"indptr": np.array([0, 1]), "indices": np.array([0.5])}, "must hold integers"),
    ({"indptr": np.zeros((2, 2), dtype=int), "indices": np.array([0])}, "must be 1-D"),
    ({"indptr": np.array([], dtype=int), "indices": np.array([], dtype=int)}, "empty"),
    ({"indptr": np.array([0, 1]), "indices": np.array([0]), "shape": np.array([3, 3])}, "rows"),
])
def test_malformed_npz(tmp_path, arrays, message):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(ValueError, match="bad.npz") as info:
        readers.read_graph(path)
    assert message in str(info.value)


def test_malformed_npz_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        readers.read_graph(garbage)
    objects = tmp_path / "objects.npz"
    np.savez(objects, indptr=np.array([0, 1], dtype=object), indices=np.array([0]))
    with pytest.raises(ValueError, match="objects.npz"):  # never unpickled
        readers.read_graph(objects)
    broken = tmp_path / "broken_scipy.npz"
    np.savez(broken, format=np.array(b"csr"), shape=np.array([2, 2]), data=np.ones(1),
             indices=np.array([5]), indptr=np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="broken_scipy.npz"):
        readers.read_graph(broken)


def test_malformed_mtx(tmp_path):
    bad = tmp_path / "bad.mtx"
    bad.write_text("this is not matrix market\n1 2 3\n")
    with pytest.raises(ValueError, match="not a valid Matrix Market"):
        readers.read_graph(bad)
    truncated = tmp_path / "trunc.mtx"
    truncated.write_text("%%MatrixMarket matrix coordinate real general\n3 3 4\n1 1 1.0\n")
    with pytest.raises(ValueError, match="trunc.mtx"):
        readers.read_graph(truncated)
    dense_file = tmp_path / "dense.mtx"
    scipy.io.mmwrite(str(dense_file), np.eye(3))
    with pytest.raises(ValueError, match="dense"):
        readers.read_graph(dense_file)


@pytest.mark.parametrize("text, message", [
    ("0 1\n1 x\n", "line 2: node ids must be integers"),
    ("0 1\n7\n", "line 2: expected two integer node ids"),
    ("0 -1\n", "line 1: node ids must be non-negative"),
    ("# only comments\n\n", "no edges"),
    ("1.5 2\n", "line 1: node ids must be integers"),
])
def test_malformed_edge_list(tmp_path, text, message):
    path = tmp_path / "g.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match="g.txt") as info:
        readers.read_graph(path)
    assert message in str(info.value)


def test_binary_edge_list_missing_file_and_directory(tmp_path):
    binary = tmp_path / "g.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a text edge list|node ids|expected two"):
        readers.read_graph(binary)
    with pytest.raises(ValueError, match="does not exist"):
        readers.read_graph(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="directory"):
        readers.read_graph(tmp_path)
    rect = tmp_path / "r.npz"
    np.savez(rect, indptr=np.array([0, 1]), indices=np.array([2]), shape=np.array([1, 3]))
    with pytest.raises(ValueError, match="non-square"):
        readers.read_graph(rect, symmetrize=True)


# ---------------------------------------------------------------------------- synthetic graphs


@pytest.mark.parametrize("family", graphs.FAMILIES)
def test_families_are_seeded_and_sized(family):
    a = graphs.make_graph(family, 500, 8, seed=3)
    b = graphs.make_graph(family, 500, 8, seed=3)
    c = graphs.make_graph(family, 500, 8, seed=4)
    np.testing.assert_array_equal(a.graph.indices, b.graph.indices)
    assert not np.array_equal(a.graph.indices, c.graph.indices) or a.graph.nnz != c.graph.nnz
    d = a.describe()
    assert d["n_dst"] == 500
    assert 7.0 <= d["avg_degree"] <= 8.5
    assert d["index_dtype"] == "int32"
    if family == "bipartite":
        assert d["n_src"] == 1000 and not d["square"]
    else:
        assert d["square"]
    if family == "powerlaw":
        A = dense(a.graph)
        np.testing.assert_array_equal(A, A.T)
        assert d["max_degree"] > 4 * d["avg_degree"]  # hubs


def test_family_errors():
    with pytest.raises(ValueError, match="unknown graph family"):
        graphs.make_graph("smallworld", 10, 2)
    with pytest.raises(ValueError, match="nodes must be at least 1"):
        graphs.make_graph("uniform", 0, 2)
    with pytest.raises(ValueError, match="degree must be an integer"):
        graphs.make_graph("uniform", 10, 2.5)


# ---------------------------------------------------------------------------- sweep parsing


def test_sweep_parsing_good():
    assert cli.int_list("--nodes")("1000, 10k,1M,1000") == [1000, 10_000, 1_000_000]
    assert cli.parse_features("32,16:64") == [(32, 32), (16, 64)]
    assert cli.choice_list("--score", ("dot", "additive"))("all") == ["dot", "additive"]
    assert cli.choice_list("--dtype", cli.DTYPES, cli._DTYPE_ALIASES)("f64,float32") == ["float64", "float32"]
    args = cli.build_parser().parse_args(["--ops", "layer,forward", "--warmup", "0"])
    assert args.ops == ["layer", "forward"] and args.warmup == 0


@pytest.mark.parametrize("parse, text", [
    (cli.int_list("--nodes"), ""),
    (cli.int_list("--nodes"), "abc"),
    (cli.int_list("--nodes"), "0"),
    (cli.int_list("--nodes"), "-5"),
    (cli.int_list("--nodes"), "10,,20"),
    (cli.int_list("--nodes"), "1.5"),
    (cli.parse_features, "32:"),
    (cli.parse_features, "1:2:3"),
    (cli.choice_list("--score", ("dot",)), "dot,nope"),
])
def test_sweep_parsing_bad(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_case_enumeration_dedupes_additive_and_layer():
    args = cli.build_parser().parse_args(["--features", "8,16:32", "--score", "dot,additive",
                                          "--ops", "forward,layer"])
    cli._fill_defaults(args, [])
    cases = cli.enumerate_cases(args, 1)
    fwd = [c for c in cases if c.op == "forward"]
    layer = [c for c in cases if c.op == "layer"]
    # dot: 2 feature pairs; additive ignores D: Dv 8 and Dv 32
    assert len(fwd) == 4
    assert {(c.score, c.d, c.dv) for c in fwd} == {("dot", 8, 8), ("dot", 16, 32), ("additive", None, 8),
                                                   ("additive", None, 32)}
    assert {(c.dv, c.in_dim) for c in layer} == {(8, 64), (32, 64)}


# ---------------------------------------------------------------------------- timing


def test_measure_protocol_and_stats():
    calls = []
    m = timing.measure(lambda: calls.append(1), warmup=2, repeat=4, host_probe=timing.HostMemoryProbe())
    assert len(calls) == 1 + 2 + 4 + 1  # first, warm-up, timed, memory probe
    d = m.as_dict()
    assert d["repeat"] == 4 and len(d["times_s"]) == 4
    assert d["min_s"] <= d["q1_s"] <= d["median_s"] <= d["q3_s"] <= d["max_s"]
    assert d["host_memory_method"] in ("rss-hwm", "tracemalloc")
    with pytest.raises(ValueError):
        timing.measure(lambda: None, repeat=0)


def test_measure_stops_early_after_max_time():
    m = timing.measure(lambda: time.sleep(0.02), warmup=0, repeat=50, max_time=0.05)
    assert 3 <= len(m.times_s) < 50 and m.stopped_early


def test_host_memory_probe_sees_a_large_allocation():
    probe = timing.HostMemoryProbe()
    peak = probe.measure(lambda: np.ones(40 * 2**20 // 8).sum())
    assert peak >= 30 * 2**20
    assert probe.measure(lambda: None) < 8 * 2**20


def test_bytes_model_forward():
    g = {"n_dst": 10, "n_src": 20, "nnz": 50, "index_dtype": "int32"}
    c = {"op": "forward", "heads": 2, "d": 4, "dv": 8, "score": "dot", "dtype": "float64", "in_dim": None}
    expected = (11 + 50) * 4 + 8 * (10 * 2 * 4 + 20 * 2 * 4 + 20 * 2 * 8 + 10 * 2 * 8)
    assert report.model_bytes("forward", g, c) == expected


# ---------------------------------------------------------------------------- a tiny run and its JSON


def test_tiny_run_json_schema(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(TINY + ["--score", "dot,additive", "--ops", "all", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "median" in captured.out and "vs numpy" in captured.out
    doc = json.loads(out.read_text())
    assert doc["schema"] == "sparsegat-bench/1"
    assert doc["command"].startswith("sparsegat bench ")
    for key in ("created", "argv", "settings", "machine", "backends", "baseline", "graphs", "results",
                "notes", "elapsed_s"):
        assert key in doc
    machine = doc["machine"]
    for key in ("cpu_model", "threads", "gpus", "gpu", "versions", "python", "platform"):
        assert key in machine
    assert machine["versions"]["numpy"] == np.__version__
    assert doc["backends"]["run"] == ["numpy"]
    (gdesc,) = doc["graphs"]
    assert gdesc["n_dst"] == 200 and gdesc["nnz"] > 0 and gdesc["family"] == "uniform"
    ops = sorted(r["config"]["op"] for r in doc["results"])
    assert ops == ["backward", "backward", "forward", "forward", "layer"]
    for r in doc["results"]:
        assert r["status"] == "ok" and r["backend"] == "numpy"
        assert len(r["times_s"]) == r["repeat"] == 1
        for key in ("first_s", "median_s", "min_s", "max_s", "q1_s", "q3_s", "bytes_model",
                    "bandwidth_gbs", "peak_host_bytes", "host_memory_method", "implementation", "clock"):
            assert r[key] is not None, key
        assert r["speedup"] == pytest.approx(1.0)
        assert r["bandwidth_gbs"] == pytest.approx(r["bytes_model"] / r["median_s"] / 1e9)


def test_run_on_a_graph_file_and_bipartite(tmp_path, capsys):
    path = tmp_path / "g.txt"
    path.write_text("\n".join(f"{i} {(i * 7 + 3) % 50}" for i in range(50)) + "\n")
    out = tmp_path / "b.json"
    assert main(TINY + ["--graph", str(path), "--json", str(out), "--nodes", "99"]) == 0
    doc = json.loads(out.read_text())
    assert doc["graphs"][0]["file"].endswith("g.txt")
    assert any("ignored" in n for n in doc["notes"])
    assert main(TINY + ["--family", "bipartite", "--ops", "forward,backward,layer", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["graphs"][0]["n_src"] == 400
    assert {r["status"] for r in doc["results"]} == {"ok"}
    capsys.readouterr()


# matplotlib comes with the test extra (pip install ".[numba,test]"), so CI runs this test:
# there a missing matplotlib is a failure, not a skip.
@pytest.mark.skipif(not HAS_MATPLOTLIB and not os.environ.get("CI"), reason="needs matplotlib")
def test_plot(tmp_path, capsys):
    png = tmp_path / "plot.png"
    assert main(TINY + ["--nodes", "100,300", "--ops", "forward,backward", "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.ndim == 3 and min(img.shape[:2]) >= 200  # a real figure, not an empty file
    assert np.unique(img.reshape(-1, img.shape[2]), axis=0).shape[0] > 10  # something was drawn
    capsys.readouterr()


@pytest.mark.pyg
@pytest.mark.skipif(not HAS_PYG, reason="needs torch and torch_geometric")
@pytest.mark.parametrize("score", ["dot", "scaled_dot", "cosine", "euclidean", "additive", "gatv2"])
def test_pyg_edgewise_operator_matches_sparsegat(score):
    # The PyG comparison times the same function as sparsegat's operator.
    import torch

    from sparsegat.bench.pyg import edge_attention, edge_index

    bg = graphs.make_graph("powerlaw", 60, 5, seed=1)
    g = bg.graph
    rng = np.random.default_rng(0)
    shape = (60, 2) if score == "additive" else (60, 2, 3)
    q, k, v = rng.standard_normal(shape), rng.standard_normal(shape), rng.standard_normal((60, 2, 4))
    att = rng.standard_normal((2, 3)) if score == "gatv2" else None
    ref, _ = attention_forward(g, q, k, v, score=score, att=att, backend="numpy")
    src, dst = (torch.from_numpy(a) for a in edge_index(g))
    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    out = edge_attention(t(q), t(k), t(v), t(att), src, dst, 60, score)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- CLI exit codes and messages


def test_cli_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    assert "--nodes" in capsys.readouterr().out
    for argv, word in ([["--nodes", "abc"], "--nodes"], [["--score", "nope"], "--score"],
                       [["--backends", "tpu"], "--backends"], [["--repeat", "0"], "--repeat"],
                       [["--no-such-option"], "unrecognized"], [["--features", "4:"], "--features"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert word in err and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--graph", "/nonexistent/graph.txt"], "does not exist"),
    (["--json", "/nonexistent/dir/out.json"], "does not exist"),
    (["--plot", "out.txt"], "must end with one of"),
    (["--backends", "cupy"], "no backend can run here"),
])
def test_cli_errors_are_one_line(capsys, extra, message):
    assert main(TINY[:-4] + ["-q"] + extra) == 1
    err = capsys.readouterr().err
    assert message in err and "error:" in err and "Traceback" not in err


def test_cli_malformed_graph_file(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text("0 1\nfoo bar\n")
    assert main(["--graph", str(path), "-q"]) == 1
    err = capsys.readouterr().err
    assert "bad.txt, line 2" in err and "Traceback" not in err


def test_unavailable_backend_is_skipped_with_a_note(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(TINY[:-4] + ["--backends", "numpy,cupy,pyg-cuda", "--no-pyg", "--ops", "forward",
                           "--json", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "cupy" in captured.err and "skipped" in captured.err
    doc = json.loads(out.read_text())
    assert "cupy" in doc["backends"]["skipped"] and doc["backends"]["run"] == ["numpy"]


def test_failing_backend_is_reported_and_exit_status_1(tmp_path, capsys, monkeypatch):
    from sparsegat.bench import runners

    def broken(self, case, bg, inputs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(runners.SparsegatRunner, "prepare", broken)
    out = tmp_path / "b.json"
    assert main(TINY + ["--ops", "forward", "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "kernel exploded" in captured.out and "Traceback" not in captured.err + captured.out
    (r,) = json.loads(out.read_text())["results"]
    assert r["status"] == "error" and "kernel exploded" in r["error"]


def test_interrupt_keeps_what_was_measured(tmp_path, capsys, monkeypatch):
    real = timing.measure
    calls = []

    def interrupted_on_second(fn, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(fn, **kwargs)

    monkeypatch.setattr(timing, "measure", interrupted_on_second)
    out = tmp_path / "b.json"
    assert main(TINY + ["--ops", "forward,backward", "--json", str(out)]) == 130
    doc = json.loads(out.read_text())
    assert len(doc["results"]) == 1 and any("interrupted" in n for n in doc["notes"])
    capsys.readouterr()


# ---------------------------------------------------------------------------- helpers of the bench/ scripts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(f for f in os.listdir(os.path.join(REPO, "bench")) if f.endswith(".py"))
#: Scripts that diagnose a backend itself (the CUDA kernels' resources, their runtime on a
#: first GPU run, the cost of the numba backend's per-graph plans), so they read
#: ``sparsegat.backends`` on purpose.
BACKEND_DIAGNOSTICS = {"cuda_resources.py", "gpu_first_run.py", "graph_setup.py", "kernel_threads.py"}


def test_chung_lu_edges_are_seeded_distinct_and_loop_free():
    src, dst = graphs.chung_lu_edges(300, 2000, seed=3)
    again = graphs.chung_lu_edges(300, 2000, seed=3)
    assert src.shape == dst.shape == (2000,)
    np.testing.assert_array_equal(src, again[0])
    np.testing.assert_array_equal(dst, again[1])
    assert not np.any(src == dst)
    assert np.unique(src * 300 + dst).size == 2000
    assert src.min() >= 0 and max(src.max(), dst.max()) < 300
    assert np.bincount(dst, minlength=300).max() > 4 * 2000 / 300  # hubs
    with pytest.raises(ValueError, match="at most"):
        graphs.chung_lu_edges(3, 7)


def test_uniform_graph_with_loops():
    g, src, dst = graphs.uniform_graph_with_loops(np, 50, edges=200, seed=1)
    assert g.shape == (50, 50) and g.index_dtype == np.int32
    rows = g.row_ids()
    assert np.all(np.isin(np.arange(50) * 51, rows.astype(np.int64) * 50 + g.indices))  # every self-loop
    np.testing.assert_array_equal(src, g.indices)
    np.testing.assert_array_equal(dst, rows)
    g2, _, _ = graphs.uniform_graph_with_loops(np, 50, degree=4, seed=1)
    assert g2.nnz <= 200 and np.all(g2.degrees() >= 1)
    with pytest.raises(ValueError, match="exactly one"):
        graphs.uniform_graph_with_loops(np, 50, edges=10, degree=2)


def test_time_calls_counts_and_clock():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
        return fn

    times = timing.time_calls({"a": make("a"), "b": make("b")}, warmup=2, repeat=3)
    assert calls == {"a": 5, "b": 5}
    assert list(times) == ["a", "b"] and all(len(t) == 3 and min(t) >= 0 for t in times.values())

    class FakeClock:
        syncs = 0

        def sync(self):
            FakeClock.syncs += 1

        def time(self, fn):
            fn()
            return 0.5

    assert timing.time_calls({"a": make("a")}, warmup=0, repeat=2, clock=FakeClock()) == {"a": [0.5, 0.5]}
    assert FakeClock.syncs == 1
    with pytest.raises(ValueError):
        timing.time_calls({}, warmup=0, repeat=0)


def test_host_memory_probe_without_trim_reports_rss_before():
    probe = timing.HostMemoryProbe(trim=False)
    peak = probe.measure(lambda: np.ones(40 * 2**20 // 8).sum())
    assert peak >= 30 * 2**20
    if probe.method == "rss-hwm":
        assert probe.rss_before_bytes > 0


def test_run_json(tmp_path):
    import sys

    ok = timing.run_json([sys.executable, "-c", "print('noise'); print('{\"a\": 1}')"])
    assert ok == {"a": 1}
    with pytest.raises(timing.SubprocessError, match="boom"):
        timing.run_json([sys.executable, "-c", "import sys; sys.exit('boom')"])
    with pytest.raises(timing.SubprocessError, match="no JSON"):
        timing.run_json([sys.executable, "-c", "print('not json')"])


def test_traffic_models():
    from sparsegat.bench import traffic

    # The 100k-node layer benchmark: 1.7M edges with self-loops, 4 heads x 32.
    t = traffic.attention_traffic(100_000, 1_700_000, 4, 32)
    assert t["forward"] == {"streamed": 63_200_004, "gathered": 897_600_000.0}
    assert t["backward"] == {"streamed": 270_800_008, "gathered": 1_224_000_000.0}
    b = traffic.memory_bound({"streamed": 2e9, "gathered": 1e9}, {"triad_GBps": 20.0, "gather_512B_rows_GBps": 5.0},
                             measured_s=0.5)
    assert b["bound_s"] == pytest.approx(0.1 + 0.2) and b["effective_GBps"] == pytest.approx(6.0)
    f = traffic.fused_forward_bytes(nnz=10, n=4, n_segments=5, heads=1, d=2, dv=3)
    index = 10 * 4 + 6 * 4 + 2 * 5 * 4
    once = 4 * 2 * 4 + 4 * 3 * 4 + 2 * 4 * 4
    assert f == {"compulsory": index + once + 4 * 2 * 4 + 4 * 3 * 4, "requested": index + once + 10 * 5 * 4}
    assert report.model_bytes is traffic.model_bytes


def test_cuda_row_segments_without_a_gpu():
    from sparsegat.backends.cuda import launch
    from sparsegat.bench.kernels import row_segments

    for score, D, Dv in (("dot", 128, 128), ("dot", 8, 8), ("additive", 1, 64)):
        seg = launch.feature_geometry(score, D, Dv, 4).segment_edges
        long = 2 * seg + 1
        indices = np.concatenate([np.arange(long), np.arange(3)])
        g = CSRGraph(np.array([0, long, long, long + 3]), indices, (3, long))
        # a long row in three segments; an empty row has one
        assert row_segments(g, score, D, Dv, np.float32) == 3 + 1 + 1, (score, D, Dv)


def test_aligned_copy_and_relative_error():
    from sparsegat.bench.layers import aligned_copy, relative_error

    a = np.arange(1000, dtype=np.float32).reshape(100, 10)[:, ::2]
    b = aligned_copy(a)
    assert b.ctypes.data % 64 == 0 and b.flags.c_contiguous and b.dtype == a.dtype
    np.testing.assert_array_equal(a, b)
    assert relative_error(b, a) == 0.0
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)


@pytest.mark.pyg
@pytest.mark.skipif(not HAS_PYG, reason="needs torch and torch_geometric")
def test_gatconv_helpers_build_the_same_layer_on_both_sides():
    import torch

    from sparsegat.bench.layers import relative_error, sparsegat_gatconv
    from sparsegat.bench.pyg import edge_index, pyg_gatconv, pyg_gatconv_grads

    rng = np.random.default_rng(0)
    g = graphs.make_graph("powerlaw", 40, 4, seed=2).graph
    params = {"W": rng.standard_normal((6, 2 * 3)).astype(np.float32),
              "att_src": rng.standard_normal((2, 3)).astype(np.float32),
              "att_dst": rng.standard_normal((2, 3)).astype(np.float32),
              "bias": rng.standard_normal(6).astype(np.float32)}
    x = rng.standard_normal((40, 6)).astype(np.float32)
    R = rng.standard_normal((40, 6)).astype(np.float32)
    layer = sparsegat_gatconv(params, backend="numpy")
    assert layer.params["W"] is not params["W"]
    y = layer.forward(x, g, training=True)
    layer.backward(R)
    conv = pyg_gatconv(params)
    ty = conv(torch.from_numpy(x), torch.from_numpy(edge_index(g)))
    ty.backward(torch.from_numpy(R))
    assert relative_error(y, ty.detach().numpy()) < 1e-5
    for name, grad in pyg_gatconv_grads(conv).items():
        assert relative_error(layer.grads[name], grad) < 1e-4, name


@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - BACKEND_DIAGNOSTICS))
def test_bench_scripts_use_public_names_only(script):
    import ast

    tree = ast.parse(open(os.path.join(REPO, "bench", script), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sparsegat"):
            assert not node.module.startswith("sparsegat.backends"), (script, node.module)
            assert not any(part.startswith("_") for part in node.module.split(".")), (script, node.module)
            assert not any(a.name.startswith("_") for a in node.names), (script, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("sparsegat.backends") for a in node.names), script


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_scripts_start(script):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, os.path.join(REPO, "bench", script), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout


# ---------------------------------------------------------------------------- torch, jax and jax-pure backends


def _need(name):
    """Skip unless backend ``name`` (torch, jax, jax-pure) can run here."""
    if name == "torch":
        from sparsegat.bench.torch_runner import torch_status as status
    else:
        from sparsegat.bench.jax_runner import jax_status as status
    reason = status(name)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


@pytest.fixture
def keep_x64():
    """Restore JAX's jax_enable_x64 after the test (a float64 run turns it on)."""
    if importlib.util.find_spec("jax") is None:
        yield None
        return
    import jax

    before = jax.config.jax_enable_x64
    yield jax
    jax.config.update("jax_enable_x64", before)


def _runner(name):
    from sparsegat.bench.runners import SparsegatRunner

    if name == "torch":
        from sparsegat.bench.torch_runner import TorchRunner

        return TorchRunner(name)
    if name.startswith("jax"):
        from sparsegat.bench.jax_runner import JaxRunner

        return JaxRunner(name)
    if name.startswith("pyg"):
        from sparsegat.bench.pyg import PygRunner

        return PygRunner(name)
    return SparsegatRunner(name)


def _host(a):
    return np.asarray(a.detach().numpy() if hasattr(a, "detach") else a, dtype=np.float64)


def _check_new_backend_run(doc, names, ops):
    assert doc["schema"] == "sparsegat-bench/1"
    assert doc["backends"]["run"] == ["numpy"] + names and doc["backends"]["skipped"] == {}
    for r in doc["results"]:
        assert r["status"] == "ok", (r["backend"], r.get("reason"), r.get("error"))
        assert r["device"] == "cpu" and r["clock"] == "perf_counter"
        for key in ("first_s", "median_s", "min_s", "max_s", "bytes_model", "bandwidth_gbs", "speedup",
                    "peak_host_bytes", "implementation"):
            assert r[key] is not None, (r["backend"], key)
    for name in names:
        got = sorted(r["config"]["op"] for r in doc["results"] if r["backend"] == name)
        assert got == sorted(ops), name


def test_torch_backend_tiny_run(tmp_path, capsys):
    _need("torch")
    out = tmp_path / "t.json"
    rc = main(TINY + ["--backends", "numpy,torch", "--score", "dot,gatv2", "--ops", "all", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    doc = json.loads(out.read_text())
    _check_new_backend_run(doc, ["torch"], ["forward", "forward", "backward", "backward", "layer"])
    impl = {r["config"]["op"]: r["implementation"] for r in doc["results"] if r["backend"] == "torch"}
    assert impl["forward"].startswith("sparsegat.torch.attention")
    assert impl["layer"].startswith("sparsegat.torch.GATConv")
    assert doc["machine"]["versions"]["torch"] is not None
    assert " torch " in captured.out


def test_jax_backends_tiny_run(tmp_path, capsys, keep_x64):
    _need("jax")
    _need("jax-pure")
    keep_x64.config.update("jax_enable_x64", False)  # restored by the fixture
    out = tmp_path / "j.json"
    rc = main(TINY + ["--backends", "numpy,jax,jax-pure", "--score", "additive", "--dtype", "f32,f64",
                      "--ops", "all", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.out + captured.err
    doc = json.loads(out.read_text())
    _check_new_backend_run(doc, ["jax", "jax-pure"], ["forward", "forward", "backward", "backward",
                                                      "layer", "layer"])
    assert {r["config"]["dtype"] for r in doc["results"] if r["backend"] == "jax"} == {"float32", "float64"}
    impl = {(r["backend"], r["config"]["op"]): r["implementation"] for r in doc["results"]}
    assert impl["jax", "forward"].startswith("sparsegat.jax.attention")
    assert impl["jax", "layer"].startswith("sparsegat.jax.gat_conv.apply")
    assert impl["jax-pure", "backward"].startswith("pure JAX")
    assert doc["machine"]["versions"]["jax"] is not None
    # float64 needs 64-bit JAX: turned on for the run, with a note
    assert keep_x64.config.jax_enable_x64 and any("jax_enable_x64" in n for n in doc["notes"])


def test_jax_layer_is_skipped_on_a_bipartite_graph(tmp_path, capsys):
    _need("jax")
    out = tmp_path / "b.json"
    assert main(TINY + ["--backends", "jax", "--family", "bipartite", "--ops", "layer", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["results"]
    assert r["status"] == "skipped" and "square" in r["reason"]
    capsys.readouterr()


def test_unavailable_torch_and_jax_are_skipped_with_a_note(tmp_path, capsys, monkeypatch):
    # As when neither is installed: find_spec finds no torch and no jax.
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "jax"):
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    out = tmp_path / "u.json"
    rc = main(TINY[:-4] + ["--backends", "numpy,torch,jax,jax-pure", "--ops", "forward", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(out.read_text())
    assert doc["backends"]["run"] == ["numpy"]
    assert doc["backends"]["skipped"] == {"torch": "torch is not installed", "jax": "jax is not installed",
                                          "jax-pure": "jax is not installed"}
    assert any("backend jax skipped" in n for n in doc["notes"])
    assert main(TINY[:-4] + ["--backends", "torch,jax", "-q"]) == 1
    err = capsys.readouterr().err
    assert "no backend can run here" in err and "torch is not installed" in err and "Traceback" not in err


def test_bench_imports_neither_torch_nor_jax_unless_asked():
    import subprocess
    import sys

    code = ("import sys; from sparsegat.bench.cli import main; "
            f"rc = main({TINY + ['--ops', 'forward']!r}); "
            "assert rc == 0, rc; "
            "print(sorted(m for m in ('torch', 'jax', 'torch_geometric') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", ["torch", "jax", "jax-pure"])
@pytest.mark.parametrize("family", ["powerlaw", "bipartite"])
def test_new_backends_time_the_same_operator(name, family, keep_x64):
    # Forward and backward of every new backend agree with the numpy reference backend.
    from sparsegat.bench.runners import Case, make_inputs

    _need(name)
    if name.startswith("jax"):
        keep_x64.config.update("jax_enable_x64", True)
    bg = graphs.make_graph(family, 30, 4, seed=1)
    runner, ref = _runner(name), _runner("numpy")
    for score in ("additive", "gatv2", "cosine"):
        d = None if score == "additive" else 3
        fwd = Case(0, "forward", 2, d, 4, score, "float64")
        inputs = make_inputs(fwd, bg.graph, seed=0)
        expected, _ = ref.prepare(fwd, bg, inputs)()
        np.testing.assert_allclose(_host(runner.prepare(fwd, bg, inputs)()), expected, rtol=1e-9, atol=1e-12)
        bwd = Case(0, "backward", 2, d, 4, score, "float64")
        grads = ref.prepare(bwd, bg, inputs)()
        got = runner.prepare(bwd, bg, inputs)()
        names = ["q", "k", "v"] + (["att"] if score == "gatv2" else [])
        assert len(got) == len(names)
        for n, g in zip(names, got):
            np.testing.assert_allclose(_host(g), getattr(grads, n), rtol=1e-8, atol=1e-10, err_msg=f"{score} d{n}")


def test_jax_layer_steps_match_sparsegat_nn(keep_x64):
    # jax and jax-pure run the same layer step (same parameters) as sparsegat.nn.GATConv.
    from sparsegat.bench.jaxref import gat_params
    from sparsegat.bench.layers import sparsegat_gatconv
    from sparsegat.bench.runners import Case, make_inputs

    _need("jax")
    keep_x64.config.update("jax_enable_x64", True)
    bg = graphs.make_graph("powerlaw", 40, 4, seed=2)
    case = Case(0, "layer", 2, None, 3, "additive", "float64", 5)
    inputs = make_inputs(case, bg.graph, seed=0)
    layer = sparsegat_gatconv(gat_params(5, 3, 2, np.float64), backend="numpy")
    y = layer.forward(inputs.x, bg.graph, training=True)
    dx = layer.backward(inputs.dy)
    for name in ("jax", "jax-pure"):
        _need(name)
        got_y, (pgrads, got_dx) = _runner(name).prepare(case, bg, inputs)()
        np.testing.assert_allclose(_host(got_y), y, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(_host(got_dx), dx, rtol=1e-8, atol=1e-10, err_msg=name)
        for key, grad in layer.grads.items():
            np.testing.assert_allclose(_host(pgrads[key]), grad, rtol=1e-8, atol=1e-10, err_msg=f"{name} {key}")


@pytest.mark.pyg
@pytest.mark.skipif(not HAS_PYG, reason="needs torch and torch_geometric")
@pytest.mark.parametrize("family", ["powerlaw", "bipartite"])
def test_torch_layer_step_matches_pyg(family):
    # The torch row builds sparsegat.torch.GATConv as the pyg row builds PyG's: same parameters, same step.
    import torch

    from sparsegat.bench.runners import Case, make_inputs

    _need("torch")
    bg = graphs.make_graph(family, 40, 4, seed=2)
    case = Case(0, "layer", 2, None, 3, "additive", "float64", 5)
    inputs = make_inputs(case, bg.graph, seed=0)
    ours, theirs = _runner("torch"), _runner("pyg")
    ours_params = ours._gatconv(case, torch.float64).state_dict()
    pyg_params = theirs._gatconv(case, torch.float64).state_dict()
    assert ours_params.keys() == pyg_params.keys()
    assert all(torch.equal(ours_params[k], pyg_params[k]) for k in pyg_params)
    (y1, g1), (y2, g2) = ours.prepare(case, bg, inputs)(), theirs.prepare(case, bg, inputs)()
    np.testing.assert_allclose(_host(y1), _host(y2), rtol=1e-9, atol=1e-12)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(_host(a), _host(b), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", ["powerlaw", "bipartite"])
def test_pure_jax_reference_matches_sparsegat(family, keep_x64):
    # bench/jax_attention.py and the jax-pure backend time this function.
    from sparsegat.spec import SCORES

    if keep_x64 is None:
        pytest.skip("jax is not installed")
    keep_x64.config.update("jax_enable_x64", True)
    from sparsegat.bench.jaxref import edge_arrays, pure_attention

    g = graphs.make_graph(family, 25, 3, seed=4).graph
    if family == "bipartite":  # an empty destination row
        g = CSRGraph(np.concatenate([[0], g.indptr[:-1]]), g.indices[:g.indptr[-2]], (g.n_dst, g.n_src))
        assert g.degrees()[0] == 0
    rows, cols = edge_arrays(g)
    rng = np.random.default_rng(0)
    for score in SCORES:
        shape = (2,) if score == "additive" else (2, 3)
        q, k = rng.standard_normal((g.n_dst,) + shape), rng.standard_normal((g.n_src,) + shape)
        v = rng.standard_normal((g.n_src, 2, 4))
        att = rng.standard_normal((2, 3)) if score == "gatv2" else None
        tau = 0.7 if score in ("cosine", "euclidean") else 1.0
        ref, _ = attention_forward(g, q, k, v, score=score, att=att, tau=tau, backend="numpy")
        out = pure_attention(q, k, v, rows, cols, g.n_dst, score, att, tau=tau)
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-10, atol=1e-12, err_msg=score)
