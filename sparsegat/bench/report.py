"""Reports of ``sparsegat bench``: table, JSON, speed-ups, machine (the plot: :mod:`sparsegat.bench.plot`).

The bytes each operation must move (the effective-bandwidth column) come from
:func:`sparsegat.bench.traffic.model_bytes`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from typing import Any

import numpy as np

from .timing import cpu_threads, format_seconds
from .traffic import model_bytes

SCHEMA = "sparsegat-bench/1"


# ---------------------------------------------------------------------------- speed-ups


def result_key(r: dict[str, Any]) -> tuple:
    c = r["config"]
    return (r["graph_index"], c["op"], c["heads"], c["d"], c["dv"], c["score"], c["dtype"], c["in_dim"])


def add_derived(results: list[dict[str, Any]], graphs: list[dict[str, Any]], baseline: str) -> None:
    """Fill ``bytes_model``, ``bandwidth_gbs`` and ``speedup`` (baseline median / this median)."""
    base = {result_key(r): r for r in results if r["backend"] == baseline and r["status"] == "ok"}
    for r in results:
        r.setdefault("bytes_model", None)
        r.setdefault("bandwidth_gbs", None)
        r["baseline"] = baseline
        r["speedup"] = None
        if r["status"] != "ok":
            continue
        nbytes = model_bytes(r["config"]["op"], graphs[r["graph_index"]], r["config"])
        r["bytes_model"] = int(nbytes)
        if r["median_s"] > 0:
            r["bandwidth_gbs"] = nbytes / r["median_s"] / 1e9
        b = base.get(result_key(r))
        if b is not None and r["median_s"] > 0:
            r["speedup"] = b["median_s"] / r["median_s"]


# ---------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


_DISTRIBUTIONS = {
    "sparsegat": ("sparsegat",),
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "numba": ("numba",),
    "cupy": ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"),
    "torch": ("torch",),
    "torch_geometric": ("torch_geometric", "torch-geometric"),
    "jax": ("jax",),
    "jaxlib": ("jaxlib",),
    "matplotlib": ("matplotlib",),
}


def library_versions() -> dict[str, str | None]:
    """Installed versions (from package metadata; modules are not imported)."""
    out: dict[str, str | None] = {}
    for name, dists in _DISTRIBUTIONS.items():
        out[name] = None
        for dist in dists:
            try:
                out[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if out["sparsegat"] is None:
        from .. import __version__

        out["sparsegat"] = __version__
    return out


def _gpus() -> list[dict[str, Any]]:
    """GPUs seen by an already imported CuPy or torch (nothing is imported here)."""
    gpus: list[dict[str, Any]] = []
    try:
        if "cupy" in sys.modules:
            cp = sys.modules["cupy"]
            for i in range(cp.cuda.runtime.getDeviceCount()):
                p = cp.cuda.runtime.getDeviceProperties(i)
                name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
                gpus.append({"index": i, "name": name, "memory_bytes": int(p.get("totalGlobalMem", 0)),
                             "seen_by": "cupy"})
        elif "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            torch = sys.modules["torch"]
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                gpus.append({"index": i, "name": p.name, "memory_bytes": int(p.total_memory),
                             "seen_by": "torch"})
    except Exception as exc:  # a GPU query must never break the report
        gpus.append({"error": f"{type(exc).__name__}: {exc}"})
    return gpus


def machine_info() -> dict[str, Any]:
    """CPU model, threads, memory, GPUs, thread settings and library versions."""
    threads: dict[str, Any] = {"logical_cpus": os.cpu_count(), "usable_cpus": cpu_threads()}
    if "numba" in sys.modules:
        try:
            threads["numba"] = int(sys.modules["numba"].get_num_threads())
            threads["numba_threading_layer"] = sys.modules["numba"].threading_layer()
        except Exception:  # threading_layer() raises until a parallel kernel has run
            pass
    if "torch" in sys.modules:
        threads["torch"] = int(sys.modules["torch"].get_num_threads())
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "NUMBA_NUM_THREADS", "SPARSEGAT_BACKEND", "CUDA_VISIBLE_DEVICES")
           if k in os.environ}
    gpus = _gpus()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu_model": _cpu_model(),
        "threads": threads,
        "memory_bytes": _memory_total_bytes(),
        "gpus": gpus,
        "gpu": next((g["name"] for g in gpus if "name" in g), None),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "environment": env,
        "load_average": load,
    }


# ---------------------------------------------------------------------------- table


def _fmt_count(n: int) -> str:
    if n >= 10_000_000:
        return f"{n / 1e6:.0f}M"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    if n >= 1000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _fmt_mem(r: dict[str, Any]) -> str:
    parts = []
    if r.get("peak_host_bytes") is not None:
        parts.append(f"{r['peak_host_bytes'] / 2**20:.1f} host")
    if r.get("peak_gpu_bytes") is not None:
        parts.append(f"{r['peak_gpu_bytes'] / 2**20:.1f} gpu")
    return ", ".join(parts) or "-"


def format_table(results: list[dict[str, Any]], graphs: list[dict[str, Any]], baseline: str) -> str:
    """The human-readable table, one row per backend, cases separated by blank lines."""
    header = ["op", "graph", "nnz", "config", "backend", "first", "median", "[min, max]",
              "GB/s", "peak MiB", f"vs {baseline}"]
    rows: list[list[str] | None] = []
    last_key = None
    for r in results:
        key = result_key(r)
        if last_key is not None and key != last_key:
            rows.append(None)
        last_key = key
        gd = graphs[r["graph_index"]]
        head = [r["config"]["op"], gd["name"], _fmt_count(gd["nnz"]), r["label"], r["backend"]]
        if r["status"] != "ok":
            rows.append(head + [f"{r['status']}: {r.get('reason') or r.get('error') or ''}"])
            continue
        spread = f"[{format_seconds(r['min_s'])}, {format_seconds(r['max_s'])}]"
        bw = "-" if r.get("bandwidth_gbs") is None else f"{r['bandwidth_gbs']:.2f}"
        sp = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        rows.append(head + [format_seconds(r["first_s"]), format_seconds(r["median_s"]), spread, bw,
                            _fmt_mem(r), sp])
    full = [row for row in rows if row is not None and len(row) == len(header)]
    widths = [max([len(header[i])] + [len(row[i]) for row in full]) for i in range(len(header))]
    numeric = {2, 5, 6, 8, 10}

    def line(cells: list[str]) -> str:
        if len(cells) < len(header):  # a skipped/error row: the message runs on
            lead = "  ".join(c.ljust(widths[i]) for i, c in enumerate(cells[:-1]))
            return f"{lead}  {cells[-1]}".rstrip()
        return "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += ["" if row is None else line(row) for row in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------- JSON


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from NumPy scalars, tuples and nested containers."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: str, document: dict[str, Any]) -> None:
    """Write the JSON document (atomically: a temporary file renamed into place)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(document), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- plot


def matplotlib_available() -> bool:
    """True when matplotlib can be imported (the ``bench`` extra); the figure is :mod:`sparsegat.bench.plot`."""
    return importlib.util.find_spec("matplotlib") is not None
