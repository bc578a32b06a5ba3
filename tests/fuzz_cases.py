"""Malformed and extreme inputs for the fuzz suite (``tests/test_fuzz.py``), and the child
process that runs them.

A *case* is a plain dict ``{"kind": ..., ...}`` of NumPy arrays, numbers and bytes, drawn
by the hypothesis strategies below. The parent test pickles a batch of cases to a file
(our own file, in a temporary folder) and runs ``python fuzz_cases.py BATCH`` in a fresh
interpreter, because a case may crash the process (the point of the suite is that none
does). The child prints ``start i`` before and ``end i OUTCOME`` after each case, flushing,
so the parent can name the case that killed it.

Outcomes:

- ``ok``: the library accepted the case and every check on the results held (finite
  results for finite inputs, numba equal to the reference, inputs unmodified);
- ``refused``: the library raised ``ValueError`` or ``TypeError`` with a message;
- ``bad: ...``: anything else (another exception class, a failed check): a defect.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
import zipfile
from typing import Any

import numpy as np
from hypothesis import strategies as st

INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint32", "uint64")
ODD_DTYPES = ("float16", "int32", "int64", "bool", "complex64", "object", "U3")

# ---------------------------------------------------------------------- strategies


def _limits(dtype: str) -> list[int]:
    info = np.iinfo(dtype)
    return [int(info.min), int(info.max), int(info.max) // 2 + 1, -(int(info.max) // 2 + 1)]


@st.composite
def malformed_csr(draw: Any) -> dict:
    """CSR arrays, mostly broken: wraparound values near the dtype's limits, decreasing or
    out-of-range pointers, out-of-range or negative indices, wrong lengths, odd dtypes."""
    n_dst, n_src = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    dtype = draw(st.sampled_from(INT_DTYPES))
    degrees = draw(st.lists(st.integers(0, 4), min_size=n_dst, max_size=n_dst))
    indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
    nnz = int(indptr[-1])
    indices = np.array(draw(st.lists(st.integers(0, max(n_src - 1, 0)), min_size=nnz, max_size=nnz)),
                       dtype=np.int64)
    corruption = draw(st.sampled_from(["none", "wrap", "decrease", "end", "index_high", "index_negative",
                                       "length", "huge", "dtype", "shape"]))
    ip, ix = indptr.astype(object), indices.astype(object)
    if corruption == "wrap" and len(ip) >= 3:
        big = draw(st.sampled_from(_limits("int32") + _limits("int64")))
        ip[1], ip[2] = big, -big + int(ip[2])
    elif corruption == "decrease" and len(ip) >= 3:
        ip[1], ip[2] = int(ip[2]) + 1, int(ip[1])
    elif corruption == "end":
        ip[-1] = int(ip[-1]) + draw(st.sampled_from([-1, 1, 10**6]))
    elif corruption == "index_high" and len(ix):
        ix[draw(st.integers(0, len(ix) - 1))] = draw(st.sampled_from([n_src, 10**6, 2**31 - 1, 2**63 - 1]))
    elif corruption == "index_negative" and len(ix):
        ix[draw(st.integers(0, len(ix) - 1))] = draw(st.sampled_from([-1, -(2**31), -(2**63)]))
    elif corruption == "length":
        ip = ip[:-1] if draw(st.booleans()) else np.concatenate([ip, [ip[-1]]])
    elif corruption == "huge":
        ip[-1] = draw(st.sampled_from([2**31, 2**40, 2**62]))
    shape: Any = (n_dst, n_src)
    if corruption == "shape":
        shape = draw(st.sampled_from([(-1, 3), (n_dst, -2), (2**62, 2), (1.5, 2), ("3", 3), (3,), None]))

    def cast(a: np.ndarray) -> np.ndarray:
        try:
            return a.astype(dtype)  # out-of-range Python ints: keep them as int64/object below
        except (OverflowError, ValueError):
            try:
                return a.astype(np.int64)
            except OverflowError:
                return a.astype(np.uint64) if all(v >= 0 for v in a) else a.astype(np.float64)

    ip_arr, ix_arr = cast(np.array(ip, dtype=object)), cast(np.array(ix, dtype=object))
    if corruption == "dtype":
        ip_arr = ip_arr.astype(draw(st.sampled_from(["float64", "bool", "complex128"])))
    return {"kind": "csr", "indptr": ip_arr, "indices": ix_arr, "shape": shape}


@st.composite
def scipy_matrices(draw: Any) -> dict:
    """Arrays for SciPy's CSR/CSC constructors (which check little): a case feeds them to
    ``CSRGraph.from_scipy`` and to a layer as sparse ``x``."""
    csr = draw(malformed_csr())
    nnz = len(csr["indices"])
    data_dtype = draw(st.sampled_from(["float32", "float64", "complex64", "int64"]))
    return {"kind": "scipy", "format": draw(st.sampled_from(["csr", "csc"])),
            "indptr": csr["indptr"], "indices": csr["indices"], "shape": csr["shape"],
            "data": np.ones(nnz + draw(st.sampled_from([0, 0, 0, 1])), dtype=data_dtype)}


@st.composite
def operator_inputs(draw: Any) -> dict:
    """A valid graph with extreme or ill-typed operator inputs: magnitudes near the dtype's
    limits, odd dtypes, non-contiguous layouts, wrong shapes, odd ``tau``/``negative_slope``."""
    n = draw(st.integers(1, 5))
    heads, dim = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    score = draw(st.sampled_from(["dot", "scaled_dot", "cosine", "euclidean", "additive", "gatv2"]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((n, n)) < 0.6
    magnitude = draw(st.sampled_from([1.0, 1e-30, 1e4, 1e19, 1e38, 1e150, 1e300]))
    qk_shape = (n, heads) if score == "additive" else (n, heads, dim)
    arrays = {name: (rng.standard_normal(qk_shape if name != "v" else (n, heads, dim)) * magnitude)
              for name in ("q", "k", "v")}
    with np.errstate(over="ignore"):
        arrays = {k: v.astype(dtype) for k, v in arrays.items()}
    target = draw(st.sampled_from(["q", "k", "v"]))
    change = draw(st.sampled_from(["none", "none", "dtype", "strided", "fortran", "shape", "nan", "inf",
                                   "masked", "list", "none_value"]))
    a = arrays[target]
    if change == "dtype":
        with np.errstate(all="ignore"):
            a = a.astype(draw(st.sampled_from(ODD_DTYPES)))
    elif change == "strided":
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif change == "fortran":
        a = np.asfortranarray(a)
    elif change == "shape":
        a = a[:-1] if len(a) > 1 else a[None]
    elif change in ("nan", "inf"):
        a = a.copy()
        a.flat[0] = np.nan if change == "nan" else np.inf
    elif change == "masked":
        a = np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
    elif change == "list":
        a = a.tolist()
    elif change == "none_value":
        a = None
    arrays[target] = a
    extra = {}
    if score in ("cosine", "euclidean"):
        extra["tau"] = draw(st.sampled_from([1.0, 0.0, -3.0, 1e300, float("inf"), float("nan"), 10**400,
                                             np.array([True]), np.array(["2.0"]), np.float32(2.0)]))
    if score in ("additive", "gatv2"):
        extra["negative_slope"] = draw(st.sampled_from([0.2, 0.0, -1.0, 1e300, float("nan")]))
    return {"kind": "operator", "mask": mask, "score": score, "dtype": dtype, "arrays": arrays,
            "att": (rng.standard_normal((heads, dim)).astype(dtype) if score == "gatv2" else None),
            "dropout": draw(st.sampled_from([0.0, 0.5])), **extra}


@st.composite
def malformed_files(draw: Any) -> dict:
    """Data-set, graph and checkpoint files with broken contents: random bytes, truncated
    zips, missing keys, object arrays (pickles), wrong dtypes, broken CSR arrays, huge
    declared sizes, malformed ``.mtx`` and edge lists."""
    target = draw(st.sampled_from(["dataset", "graph_npz", "graph_mtx", "graph_edges", "params"]))
    n = 4
    good = {"indptr": np.array([0, 1, 2, 3, 4]), "indices": np.array([1, 2, 3, 0]),
            "x": np.ones((n, 3), np.float32), "y": np.array([0, 1, 0, 1]),
            "train_mask": np.array([1, 1, 0, 0], bool), "val_mask": np.array([0, 0, 1, 0], bool),
            "test_mask": np.array([0, 0, 0, 1], bool)}
    how = draw(st.sampled_from(["random", "truncated", "missing", "object", "dtype", "csr", "non_npy",
                                "empty", "valid"]))
    suffix = {"dataset": ".npz", "graph_npz": ".npz", "params": ".npz", "graph_mtx": ".mtx",
              "graph_edges": ".txt"}[target]
    if target in ("graph_mtx", "graph_edges"):
        lines = draw(st.sampled_from([
            "%%MatrixMarket matrix coordinate real general\n3 3 2\n1 2 1.0\n2 3 1.0\n",
            "%%MatrixMarket matrix coordinate real symmetric\n3 4 1\n1 2 1.0\n",
            "%%MatrixMarket matrix coordinate real general\n1099511627776 2 1\n1 1 1\n",
            "%%MatrixMarket matrix coordinate real general\n3 3 5\n1 2 1.0\n",
            "%%MatrixMarket matrix coordinate real general\n3 3 1\n0 2 1.0\n",
            "%%MatrixMarket matrix coordinate pattern general\n3 3 1\n4 1\n",
            "0 1\n1 2\n", "0 35184372088832\n", "1_0 2\n", "\u0661 2\n", "0 9223372036854775808\n",
            "-1 2\n", "a b\n", "0\n", "", "0 1 2 3\n", "1e3 2\n",
        ]))
        content = lines.encode("utf-8")
    else:
        arrays = dict(good) if target == "dataset" else (
            {"indptr": good["indptr"], "indices": good["indices"]} if target == "graph_npz"
            else {"1.W": np.ones((3, 2), np.float32), "1.bias": np.zeros(2, np.float32)})
        if how == "missing":
            arrays.pop(draw(st.sampled_from(sorted(arrays))))
        elif how == "object":
            arrays[draw(st.sampled_from(sorted(arrays)))] = np.array([{"a": 1}, None], dtype=object)
        elif how == "dtype":
            arrays[draw(st.sampled_from(sorted(arrays)))] = np.array(["x", "y"])
        elif how == "csr" and "indptr" in arrays:
            arrays["indptr"] = np.array([0, 2**30 + 1, -2**30 - 1, 0, 4], np.int32)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for k, v in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, np.asarray(v), allow_pickle=True)
                zf.writestr(k + ".npy", member.getvalue())
            if how == "non_npy":
                zf.writestr("notes.txt", b"hello")
        content = buf.getvalue()
        if how == "random":
            content = bytes(draw(st.binary(min_size=0, max_size=64)))
        elif how == "truncated":
            content = content[: draw(st.integers(1, max(1, len(content) - 1)))]
        elif how == "empty":
            content = b""
    return {"kind": "file", "target": target, "suffix": suffix, "content": content}


def all_cases() -> st.SearchStrategy:
    """Every kind of case."""
    return st.one_of(malformed_csr(), scipy_matrices(), operator_inputs(), malformed_files())


# ---------------------------------------------------------------------- the child


class Bad(Exception):
    """A check on an accepted case failed."""


def _snapshot(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    return obj


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and (
            a.dtype == object or np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return True


def _check_ops(g: Any, dtype: str = "float64") -> None:
    """Run the operator on an accepted graph with small random inputs, on every CPU backend."""
    import sparsegat as sg

    rng = np.random.default_rng(0)
    H, D = 2, 3
    outs = {}
    for backend in sg.available_backends():
        for score in ("dot", "additive"):
            shape_q = (g.n_dst, H) if score == "additive" else (g.n_dst, H, D)
            shape_k = (g.n_src, H) if score == "additive" else (g.n_src, H, D)
            q = rng.standard_normal(shape_q).astype(dtype)
            k = rng.standard_normal(shape_k).astype(dtype)
            v = rng.standard_normal((g.n_src, H, D)).astype(dtype)
            out, ctx = sg.attention_forward(g, q, k, v, score=score, backend=backend)
            grads = sg.attention_backward(ctx, np.ones_like(out))
            w = sg.attention_weights(g, q, k, score=score, backend=backend)
            for name, a in [("out", out), ("w", w)] + list(grads.items()):
                if not np.all(np.isfinite(a)):
                    raise Bad(f"{backend}/{score}: non-finite {name} from finite inputs")
            outs.setdefault(score, []).append(out)
            rng = np.random.default_rng(0)
    for score, results in outs.items():
        for r in results[1:]:
            if not np.allclose(r, results[0], rtol=1e-9, atol=1e-12):
                raise Bad(f"{score}: backends disagree")


def run_case(case: dict, workdir: str) -> str:
    """Run one case; its outcome (see the module docstring)."""
    import os

    import sparsegat as sg

    before = _snapshot(case)
    try:
        if case["kind"] == "csr":
            g = sg.CSRGraph(case["indptr"], case["indices"], case["shape"])
            _check_ops(g)
        elif case["kind"] == "scipy":
            import scipy.sparse as sp

            cls = sp.csr_matrix if case["format"] == "csr" else sp.csc_matrix
            try:
                m = cls((case["data"], case["indices"], case["indptr"]), shape=case["shape"])
            except Exception:  # noqa: BLE001 - SciPy refusing the arrays itself is fine
                return "refused"
            try:
                g = sg.CSRGraph.from_scipy(m)
                _check_ops(g)
            except (ValueError, TypeError) as e:
                if not str(e):
                    raise Bad("empty message") from e
            cols = m.shape[1] if isinstance(m.shape, tuple) and len(m.shape) == 2 else 1
            y = sg.nn.Linear(cols, 2, dtype=np.float64).forward(m)
            if not np.all(np.isfinite(y)):
                raise Bad("Linear: non-finite output")
        elif case["kind"] == "operator":
            rows, cols = np.nonzero(case["mask"])
            n = case["mask"].shape[0]
            g = sg.CSRGraph.from_edge_index(cols, rows, num_src=n, num_dst=n)
            a = case["arrays"]
            kwargs = {"score": case["score"], "att": case["att"], "dropout": case["dropout"], "seed": 1}
            for key in ("tau", "negative_slope"):
                if key in case:
                    kwargs[key] = case[key]
            finite_in = all(isinstance(x, np.ndarray) and x.dtype.kind == "f" and np.all(np.isfinite(x))
                            for x in a.values())
            for backend in sg.available_backends():
                out, ctx = sg.attention_forward(g, a["q"], a["k"], a["v"], backend=backend, **kwargs)
                grads = sg.attention_backward(ctx, np.ones_like(out))
                if finite_in and not np.all(np.isfinite(out)):
                    raise Bad(f"{backend}: non-finite output from finite inputs")
                del grads
        elif case["kind"] == "file":
            path = os.path.join(workdir, "case" + case["suffix"])
            with open(path, "wb") as f:
                f.write(case["content"])
            if case["target"] == "dataset":
                sg.datasets.load_npz(path)
            elif case["target"] == "params":
                sg.nn.load_params(sg.nn.Sequential(sg.nn.Linear(3, 2)), path)
            else:
                from sparsegat.bench.readers import read_graph

                read_graph(path)
    except (ValueError, TypeError) as e:
        if not str(e):
            return "bad: ValueError/TypeError without a message"
        outcome = "refused"
    except Bad as e:
        return f"bad: {e}"
    except Exception as e:  # noqa: BLE001 - any other class is the defect being looked for
        return f"bad: {type(e).__name__}: {e}".splitlines()[0][:300]
    else:
        outcome = "ok"
    if not _same(before, case):
        return "bad: an input was modified"
    return outcome


def main(batch_path: str) -> None:
    import os
    import tempfile
    import warnings

    warnings.simplefilter("ignore")
    with open(batch_path, "rb") as f:
        cases = pickle.load(f)  # our own file, written by the parent test
    with tempfile.TemporaryDirectory() as workdir:
        for i, case in enumerate(cases):
            print(f"start {i}", flush=True)
            try:
                outcome = run_case(case, workdir)
            except BaseException:  # noqa: BLE001
                outcome = "bad: " + traceback.format_exc().splitlines()[-1]
            print(f"end {i} {outcome}", flush=True)
    os._exit(0)  # skip interpreter teardown (Numba/LLVM), as the CLI does


if __name__ == "__main__":
    main(sys.argv[1])
