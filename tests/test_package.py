"""The package as a newcomer meets it, each check in a fresh interpreter (so that nothing
another test imported first can hide an import-order bug)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import textwrap

import pytest

HAS_NUMBA = importlib.util.find_spec("numba") is not None


def run_fresh(code: str) -> str:
    """Run ``code`` in a new interpreter; its stdout (fails the test on a non-zero exit)."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_import_is_light_and_subpackages_load_on_first_use():
    out = run_fresh("""
        import sys
        import sparsegat as sg
        heavy = [m for m in ("numba", "cupy", "torch", "jax", "dask", "distributed", "scipy", "sparsegat.nn",
                             "sparsegat.optim", "sparsegat.datasets", "sparsegat.train") if m in sys.modules]
        assert not heavy, heavy
        assert {"nn", "optim", "datasets", "train"} <= set(dir(sg))
        assert sg.nn.GATConv.__name__ == "GATConv" and sg.optim.Adam.__name__ == "Adam"
        assert callable(sg.datasets.load_npz) and callable(sg.train.fit)
        assert "numba" not in sys.modules  # building no layer yet compiles nothing
        for name in sg.__all__:
            getattr(sg, name)
        print(sg.__version__)
    """)
    assert out.strip() == importlib.metadata.version("sparsegat")


def test_unknown_attribute_is_an_attribute_error():
    run_fresh("""
        import sparsegat as sg
        try:
            sg.no_such_thing
        except AttributeError as e:
            assert "no_such_thing" in str(e)
        else:
            raise SystemExit("no AttributeError")
    """)


@pytest.mark.parametrize("backend", [None, "numpy"] + (["numba"] if HAS_NUMBA else []))
def test_first_call_in_a_fresh_interpreter(backend):
    """The NumPy-only user's first call (it once failed on ``importlib.util`` not being imported)."""
    out = run_fresh(f"""
        import numpy as np, sparsegat as sg
        print(sg.available_backends())
        g = sg.CSRGraph.from_edge_index([0, 1], [1, 0])
        q = np.ones((2, 1, 4), np.float32)
        out, ctx = sg.attention_forward(g, q, q, q, backend={backend!r})
        assert out.shape == (2, 1, 4) and np.allclose(out, 1.0)
        assert ctx.backend == {backend!r} or {backend!r} is None
    """)
    assert "numpy" in out


def test_backends_live_in_one_room_each_and_share_the_function_set():
    """numpy.py, numba/ and cuda/ each implement BACKEND_FUNCTIONS with the reference's
    parameter names; score codes come from one table."""
    import ast
    from pathlib import Path

    from sparsegat.backends import BACKEND_FUNCTIONS

    root = Path(importlib.util.find_spec("sparsegat.backends").origin).parent

    def functions(path: Path) -> dict[str, list[str]]:
        tree = ast.parse(path.read_text())
        return {n.name: [a.arg for a in n.args.args] for n in tree.body if isinstance(n, ast.FunctionDef)}

    ref = functions(root / "numpy.py")
    for room in (root / "numba" / "backend.py", root / "cuda" / "backend.py"):
        theirs = functions(room)
        for name in BACKEND_FUNCTIONS:
            assert theirs.get(name) == ref[name], (room, name)


def test_distributed_partition_imports_no_dask():
    """sparsegat.distributed loads Dask only when an operator, the trainer or a cluster is used."""
    run_fresh("""
        import sys
        import sparsegat as sg
        from sparsegat.distributed import partition_graph
        g = sg.CSRGraph.from_edge_index([0, 1, 2], [1, 2, 0])
        assert partition_graph(g, 2).parts == 2
        assert not [m for m in ("dask", "distributed") if m in sys.modules]
    """)
