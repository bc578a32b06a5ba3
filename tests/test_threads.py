"""Thread use without environment variables: one thread for small kernels and small BLAS
products, dynamic chunks for large kernels, quiet OpenMP workers, bitwise the same results."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import sparsegat as sg

numba = pytest.importorskip("numba")
from sparsegat.backends.numba import threads  # noqa: E402


def test_small_work_runs_on_one_thread_and_large_work_in_dynamic_chunks():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    numba.set_num_threads(2)
    with threads.threads_for(threads.SERIAL_WORK - 1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == 2
    before = numba.get_parallel_chunksize()
    with threads.threads_for(threads.SERIAL_WORK):
        assert numba.get_num_threads() == 2
        assert numba.get_parallel_chunksize() == threads.CHUNKS_PER_GRAB
    assert numba.get_parallel_chunksize() == before


@pytest.mark.parametrize("score", ["gatv2", "cosine"])
def test_results_are_bitwise_the_same_serial_and_parallel(monkeypatch, score):
    from sparsegat.bench.graphs import uniform

    g = uniform(600, 12, seed=1)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((600, 2, 8)) for _ in range(3))
    att = rng.standard_normal((2, 8)) if score == "gatv2" else None
    dout = rng.standard_normal((600, 2, 8))
    results = []
    for serial_below in (1 << 62, 0):  # everything serial, then everything parallel
        monkeypatch.setattr(threads, "SERIAL_WORK", serial_below)
        out, ctx = sg.attention_forward(g, q, k, v, score=score, att=att, dropout=0.2, seed=4, backend="numba")
        results.append((out, sg.attention_backward(ctx, dout)))
    (out1, g1), (out2, g2) = results
    np.testing.assert_array_equal(out1, out2)
    for name, a in g1.items():
        np.testing.assert_array_equal(a, getattr(g2, name), err_msg=name)


QUIET_PROBE = """
import os, numpy as np, sparsegat as sg
g = sg.CSRGraph.from_edge_index([0, 1], [1, 0])
q = np.ones((2, 1, 2))
sg.attention_forward(g, q, q, q, backend="numba")
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"))
"""


@pytest.mark.parametrize("user, expected", [(None, "PASSIVE 30000"), ("ACTIVE", "ACTIVE None")])
def test_openmp_workers_are_quieted_unless_the_user_chose(user, expected):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if user:
        env["OMP_WAIT_POLICY"] = user
    out = subprocess.run([sys.executable, "-c", QUIET_PROBE], env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    assert out.stdout.split("\n")[-2] == expected


def test_small_blas_products_run_on_one_thread():
    pytest.importorskip("threadpoolctl")
    from sparsegat import blas_threads

    controllers = blas_threads._blas_controllers()
    if not controllers or all(c.num_threads == 1 for c in controllers):
        pytest.skip("no multi-threaded BLAS found")
    before = [c.num_threads for c in controllers]
    with blas_threads.blas_threads_for(blas_threads.SMALL_PRODUCT - 1):
        assert all(c.num_threads == 1 for c in controllers)
    assert [c.num_threads for c in controllers] == before
    with blas_threads.blas_threads_for(blas_threads.SMALL_PRODUCT):
        assert [c.num_threads for c in controllers] == before
    a, b = np.arange(12.0).reshape(3, 4), np.arange(8.0).reshape(4, 2)
    np.testing.assert_array_equal(blas_threads.matmul(a, b), a @ b)


def test_tall_weight_gradients_are_blocked_deterministic_and_exact(monkeypatch):
    from sparsegat import blas_threads

    monkeypatch.setattr(blas_threads, "ROWS_PER_BLOCK", 64)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1000, 7)), rng.standard_normal((1000, 5))
    got = blas_threads.t_matmul(a, b)
    np.testing.assert_allclose(got, a.T @ b, rtol=1e-12, atol=1e-12)
    # the partials of the fixed 64-row blocks, summed in block order: bitwise that
    expected = a[:64].T @ b[:64]
    for s in range(64, 1000, 64):
        expected += a[s:s + 64].T @ b[s:s + 64]
    if blas_threads._blas_controllers():
        np.testing.assert_array_equal(got, expected)
    again = [blas_threads.t_matmul(a, b) for _ in range(3)]
    for r in again:
        np.testing.assert_array_equal(r, got)
    small = blas_threads.t_matmul(a[:100], b[:100])  # below two blocks: a.T @ b itself
    np.testing.assert_array_equal(small, a[:100].T @ b[:100])
