#!/usr/bin/env python
"""The first run of the ``cupy`` backend on a new GPU machine, as one script with a time budget.

Runs, in order of risk, each step in its own process with its own time limit, and
writes every figure to one JSON file (``gpu_first_run.json``) and every step's output to
one log (``gpu_first_run.log``) in ``--out``:

1. ``environment``: device name, compute capability, memory, driver and runtime, and the
   versions of CuPy, NumPy, torch, PyG and the CUDA tools found;
2. ``compile_options``: whether float32 subnormals are flushed (``-ftz``) in a RawModule
   compiled with our options, and the compile time of one kernel
   configuration in a fresh process, cold and again (does CuPy's disk cache serve it?);
3. ``smoke``: ``bench/gpu_smoke.py`` with ``CUDA_LAUNCH_BLOCKING=1``: every score,
   dtype and index dtype on tiny graphs against the NumPy reference;
4. ``memcheck``, ``synccheck``, ``racecheck``: ``compute-sanitizer`` over
   ``gpu_smoke.py --quick``, where the tool is installed;
5. ``resources``: registers, local (spill) and shared memory and the occupancy of every
   kernel of the main configurations, from the loaded CUDA functions;
6. ``tests_tiny``, ``tests_bitwise``, ``tests_properties``: ``tests/test_cuda_gpu.py``
   in that order (tiny and empty graphs, dispatch and misaligned views first; then
   bitwise determinism and dropout; then the hypothesis parity suite);
   (the property suite runs after the two benchmarks below, so that a slow suite
   cannot squeeze the figures out of the budget);
7. ``bench_fused``, ``bench_arxiv``: ``bench/gatconv_gpu.py``: the fused forward
   kernels (100k nodes, degree 16, D=128) and the ogbn-arxiv-sized GAT layer against
   PyG's ``GATConv`` on CUDA (PyG's peak memory measured with CuPy's pool freed);
   with ``--baseline DIR``, the same two benchmarks of another checkout right after ours
   (``bench_fused_baseline``, ``bench_arxiv_baseline``: an A/B on one machine);
   ``tests_structures_torch``: the graph structures built on the device and the PyTorch
   adapter's CUDA tests;
   ``breakdown``: where the time of that layer goes (each kernel between CUDA events,
   the rest of the GPU span, host wall time); ``bench_reddit`` last, if time is left.

Without a GPU every GPU step is recorded as skipped and the CPU-side steps still run
(the layer checked against PyG on CPU when torch and PyG are installed), so the script
itself is tested in CI. The exit status is 0 when no step failed.

Usage::

    python bench/gpu_first_run.py --out results/ --budget 540
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULT_TAG = "FIRST_RUN_RESULT "


# ----------------------------------------------------------------------------- in-process steps
def _emit(result: Any) -> None:
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver, no device
        return 0


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def step_environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    for m in ("numpy", "scipy", "cupy", "torch", "torch_geometric", "numba", "jax", "sparsegat"):
        info[m] = _version(m)
    info["tools"] = {t: shutil.which(t) for t in ("nvcc", "compute-sanitizer", "ncu", "cuobjdump", "nvidia-smi")}
    if _gpu_count():
        import cupy

        rt = cupy.cuda.runtime
        props = rt.getDeviceProperties(rt.getDevice())
        name = props["name"]
        info["device"] = name.decode() if isinstance(name, bytes) else str(name)
        info["compute_capability"] = f"{props['major']}.{props['minor']}"
        info["multiprocessors"] = props["multiProcessorCount"]
        info["memory_bytes"] = props["totalGlobalMem"]
        info["l2_bytes"] = props.get("l2CacheSize")
        info["regs_per_multiprocessor"] = props.get("regsPerMultiprocessor")
        info["driver_version"] = rt.driverGetVersion()
        info["runtime_version"] = rt.runtimeGetVersion()
    if shutil.which("nvidia-smi"):
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = res.stdout.strip()
    return info


def _configs() -> list[tuple[str, Any, Any, int, int]]:
    """(score, dtype, index dtype, D, Dv) of the main configurations."""
    import numpy as np

    return [("additive", np.float32, np.int32, 1, 64), ("gatv2", np.float32, np.int32, 64, 64),
            ("dot", np.float32, np.int32, 128, 128), ("dot", np.float32, np.int32, 32, 32),
            ("cosine", np.float32, np.int64, 64, 64), ("dot", np.float64, np.int64, 64, 64)]


def _config_names(score: str, dtype: Any, index_dtype: Any, D: int, Dv: int) -> list[str]:
    import numpy as np

    from sparsegat.backends.cuda import launch

    geom = launch.feature_geometry(score, D, Dv, np.dtype(dtype).itemsize)
    return launch.config_kernel_names(score, dtype, index_dtype, geom)


def step_compile_options() -> dict[str, Any]:
    """Whether CuPy's RawModule flushes float32 subnormals with our options (a probe kernel),
    and one configuration's compile time."""
    if not _gpu_count():
        return {"skipped": "no GPU"}
    import cupy
    import numpy as np

    from sparsegat.backends.cuda import backend, launch

    out: dict[str, Any] = {"cupy": cupy.__version__, "our_options": list(launch.NVRTC_OPTIONS)}
    t0 = time.perf_counter()
    backend._RUNTIME.prepare(_config_names("dot", np.float32, np.int32, 64, 64))
    out["prepare_seconds"] = time.perf_counter() - t0
    # Subnormal probe: a float32 subnormal times a 1 read from memory (a literal 1.0f would
    # be folded away, and a plain copy never flushes), compiled like our module.
    probe = cupy.RawModule(code='extern "C" __global__ void probe(const float* x, float* y) { y[0] = x[0] * x[1]; }',
                           options=launch.NVRTC_OPTIONS)
    x = cupy.asarray(np.array([1e-40, 1.0], dtype=np.float32))
    y = cupy.zeros(1, dtype=np.float32)
    probe.get_function("probe")((1,), (1,), (x, y))
    out["float32_subnormal_times_one"] = float(y.get()[0])
    out["float32_subnormals_flushed"] = bool(y.get()[0] == 0.0)
    return out


def step_compile_time() -> dict[str, Any]:
    """Seconds to make one configuration ready in this (fresh) process."""
    if not _gpu_count():
        return {"skipped": "no GPU"}
    import numpy as np

    from sparsegat.backends.cuda import backend

    t0 = time.perf_counter()
    backend._RUNTIME.prepare(_config_names("gatv2", np.float32, np.int32, 32, 32))
    return {"prepare_seconds": time.perf_counter() - t0,
            "cache_dir": os.environ.get("CUPY_CACHE_DIR")}


def step_resources() -> dict[str, Any]:
    """Registers, local and shared memory, and occupancy of every kernel of the main configurations."""
    if not _gpu_count():
        return {"skipped": "no GPU"}
    import cupy

    from sparsegat.backends.cuda import backend, launch

    dev = cupy.cuda.runtime.getDevice()
    rows: dict[str, Any] = {}
    for score, dtype, index_dtype, D, Dv in _configs():
        names = _config_names(score, dtype, index_dtype, D, Dv)
        backend._RUNTIME.prepare(names)
        for n in names:
            if n in rows:
                continue
            k = backend._FUNCTIONS[(dev, n)]
            row = {a: getattr(k, a, None) for a in ("num_regs", "local_size_bytes", "shared_size_bytes",
                                                   "max_threads_per_block", "binary_version", "ptx_version")}
            threads = (launch.ELEMENTWISE_THREADS if launch.kernel_base_name(n) in
                       ("sg_attn_fwd_merge", "sg_attn_weights_fin", "sg_sum_partials")
                       else 256 if launch.kernel_base_name(n) == "sg_column_sum"
                       else launch.WARP * launch.WARPS_PER_BLOCK)
            try:
                blocks = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(k.kernel.ptr, threads, 0)
                row["threads_per_block"] = threads
                row["blocks_per_sm"] = blocks
                row["occupancy"] = blocks * threads / 2048
            except Exception as exc:  # older CuPy without the driver call
                row["occupancy_error"] = f"{exc.__class__.__name__}: {exc}"
            rows[n] = row
    return {"kernels": rows}


def _bench_module(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_breakdown() -> dict[str, Any]:
    """Where the time of the ogbn-arxiv-sized layer goes: each of our kernels between CUDA
    events, the rest of the GPU time (CuPy's dense work, the NaN/inf checks), host wall time."""
    if not _gpu_count():
        return {"skipped": "no GPU"}
    import cupy
    import numpy as np

    from sparsegat.backends.cuda import backend, launch
    from sparsegat.bench.graphs import uniform_graph_with_loops
    from sparsegat.bench.layers import sparsegat_gatconv

    gpu = _bench_module("gatconv_gpu")
    wl = gpu.WORKLOADS["arxiv"]
    g, _, _ = uniform_graph_with_loops(cupy, wl["nodes"], edges=wl["edges"], seed=1)
    rng = np.random.default_rng(2)
    x = cupy.asarray(rng.standard_normal((wl["nodes"], wl["in_dim"])).astype(np.float32))
    R = cupy.asarray(rng.standard_normal((wl["nodes"], wl["heads"] * wl["out_dim"])).astype(np.float32))
    layer = sparsegat_gatconv(gpu.gat_params(wl["in_dim"], wl["heads"], wl["out_dim"], seed=3),
                              backend="cupy", add_self_loops=False, device="cupy")
    layer.input_grad = False
    fwd, step = gpu.layer_calls(layer, g, x, R)
    for _ in range(3):
        step()
    records: list[tuple[str, Any, Any]] = []
    plain_launch = backend._RUNTIME.launch

    def timed_launch(name: str, grid: tuple, block: tuple, args: tuple) -> None:
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        plain_launch(name, grid, block, args)
        end.record()
        records.append((launch.kernel_base_name(name), start, end))

    backend._RUNTIME.launch = timed_launch
    out: dict[str, Any] = {"workload": "arxiv", **wl}
    for label, fn in (("forward", fwd), ("step", step)):
        best: dict[str, Any] | None = None
        for _ in range(5):
            records.clear()
            cupy.cuda.Device().synchronize()
            t0, t1 = cupy.cuda.Event(), cupy.cuda.Event()
            wall = time.perf_counter()
            t0.record()
            fn()
            t1.record()
            t1.synchronize()
            wall = time.perf_counter() - wall
            per: dict[str, float] = {}
            for name, start, end in records:
                per[name] = per.get(name, 0.0) + cupy.cuda.get_elapsed_time(start, end)
            total = cupy.cuda.get_elapsed_time(t0, t1)
            run = {"gpu_span_ms": total, "host_wall_ms": wall * 1e3, "our_kernels_ms": per,
                   "launches": len(records), "rest_ms": total - sum(per.values())}
            if best is None or total < best["gpu_span_ms"]:
                best = run
        out[label] = best
    backend._RUNTIME.launch = plain_launch
    return out


STEPS_IN_PROCESS: dict[str, Callable[[], dict[str, Any]]] = {
    "environment": step_environment, "compile_options": step_compile_options,
    "compile_time": step_compile_time, "resources": step_resources, "breakdown": step_breakdown,
}


# ----------------------------------------------------------------------------- orchestration
class Runner:
    """Runs steps as subprocesses within a total time budget; collects results and one log."""

    def __init__(self, out: Path, budget: float, gpu: bool) -> None:
        self.out, self.deadline, self.gpu = out, time.monotonic() + budget, gpu
        self.results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "budget_s": budget, "steps": {}}
        self.log = open(out / "gpu_first_run.log", "w")
        self.failed = False

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], limit: float, *, env: dict[str, str] | None = None,
            needs_gpu: bool = True, parse: Callable[[str], Any] | None = None, min_s: float = 10,
            cwd: Path | None = None) -> None:
        rec: dict[str, Any] = {"cmd": " ".join(cmd)}
        self.results["steps"][name] = rec
        if needs_gpu and not self.gpu:
            rec["status"] = "skipped: no GPU"
            return self._done(name, rec)
        limit = min(limit, self.left() - 5)
        if limit < min_s:
            rec["status"] = f"skipped: {max(0, self.left()):.0f} s of the budget left"
            return self._done(name, rec)
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = str(cwd or REPO)  # the checkout whose package the step imports
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, full_env.get("PYTHONPATH")]))
        full_env.update({k: v for k, v in (env or {}).items() if k != "PYTHONPATH"})
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, cwd=root, env=full_env, capture_output=True, text=True, timeout=limit)
            text, rc = res.stdout + res.stderr, res.returncode
        except subprocess.TimeoutExpired as exc:
            text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            text += (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            rc = "timeout"
        rec.update(seconds=round(time.monotonic() - t0, 2), rc=rc, tail=text[-3000:])
        rec["status"] = "ok" if rc == 0 else "FAILED"
        self.failed |= rc != 0
        if parse is not None:
            try:
                rec["result"] = parse(text)
            except Exception as exc:  # keep going: the log has the output
                rec["parse_error"] = f"{exc.__class__.__name__}: {exc}"
        self.log.write(f"\n===== {name} ({rec['status']}, {rec['seconds']} s): {rec['cmd']}\n{text}\n")
        self.log.flush()
        self._done(name, rec)

    def _done(self, name: str, rec: dict[str, Any]) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {rec['status']}"
              + (f" ({rec['seconds']} s)" if "seconds" in rec else ""), flush=True)
        self.save()

    def save(self) -> None:
        with open(self.out / "gpu_first_run.json", "w") as fh:
            json.dump(self.results, fh, indent=1, default=str)


def _result_line(text: str) -> Any:
    lines = [ln for ln in text.splitlines() if ln.startswith(RESULT_TAG)]
    return json.loads(lines[-1][len(RESULT_TAG):])


def _json_file(path: Path) -> Callable[[str], Any]:
    return lambda _text: json.loads(path.read_text())


def _pytest_summary(text: str) -> str:
    """pytest's last line: ``3 passed, 10 deselected in 2.17s`` (with or without ``=`` rules)."""
    pattern = re.compile(r"\b\d+ (passed|failed|errors?|skipped|deselected)\b.* in [\d.]+s")
    lines = [ln.strip("= ") for ln in text.splitlines() if pattern.search(ln)]
    return lines[-1] if lines else ""


def _bench(r: Runner, workload: str, limit: float, out: Path, env: dict[str, str],
           baseline: Path | None = None) -> None:
    """``bench/gatconv_gpu.py --only workload``, of this checkout or of a ``baseline`` one."""
    name = f"bench_{workload}" + ("_baseline" if baseline else "")
    path = out / f"{name}.json"
    script = (baseline / "bench" if baseline else BENCH) / "gatconv_gpu.py"
    r.run(name, [sys.executable, str(script), "--only", workload, "--json", str(path)], limit, env=env,
          parse=_json_file(path), min_s=40, cwd=baseline)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_first_run", help="folder for the JSON and the log")
    ap.add_argument("--budget", type=float, default=540, help="total seconds for every step together")
    ap.add_argument("--step", choices=sorted(STEPS_IN_PROCESS), help=argparse.SUPPRESS)
    ap.add_argument("--hypothesis-profile", default="ci", help="profile of the property tests")
    ap.add_argument("--baseline", help="another checkout (e.g. the last release): its fused and arxiv "
                                       "benchmarks run right after ours, for an A/B on the same machine")
    args = ap.parse_args(argv)
    if args.step:
        _emit(STEPS_IN_PROCESS[args.step]())
        return 0

    out = Path(args.out).resolve()  # steps of a baseline checkout run in its own folder
    out.mkdir(parents=True, exist_ok=True)
    r = Runner(out, args.budget, _gpu_count() > 0)
    r.results["gpu"] = r.gpu
    py = sys.executable
    me = str(Path(__file__).resolve())
    cache = tempfile.mkdtemp(prefix="sparsegat-cupy-cache-")
    cupy_env = {"CUPY_CACHE_DIR": cache}

    r.run("environment", [py, me, "--step", "environment"], 60, needs_gpu=False, parse=_result_line)
    r.run("compile_options", [py, me, "--step", "compile_options"], 90, env=cupy_env, parse=_result_line)
    # Twice in fresh processes with one cache folder: the second shows whether the disk cache serves it.
    for i in (1, 2):
        r.run(f"compile_time_{i}", [py, me, "--step", "compile_time"], 60, env=cupy_env, parse=_result_line)
    smoke_json = out / "smoke.json"
    r.run("smoke", [py, str(BENCH / "gpu_smoke.py"), "--json", str(smoke_json)], 150,
          env=dict(cupy_env, CUDA_LAUNCH_BLOCKING="1"), parse=_json_file(smoke_json))
    sanitizer = shutil.which("compute-sanitizer")
    for tool in ("memcheck", "synccheck", "racecheck"):
        if sanitizer is None:
            r.results["steps"][tool] = {"status": "skipped: compute-sanitizer not installed"}
            continue
        r.run(tool, [sanitizer, "--tool", tool, "--error-exitcode", "9", "--print-limit", "20",
                     py, str(BENCH / "gpu_smoke.py"), "--quick"], 90, env=cupy_env)
    r.run("resources", [py, me, "--step", "resources"], 90, env=cupy_env, parse=_result_line)
    pytest_cmd = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda_gpu.py", "-m", "gpu"]
    test_env = dict(cupy_env, HYPOTHESIS_PROFILE=args.hypothesis_profile)
    r.run("tests_tiny", pytest_cmd + ["-k", "tiny or dispatch or misaligned"], 120, env=test_env,
          parse=_pytest_summary)
    r.run("tests_bitwise", pytest_cmd + ["-k", "deterministic or dropout"], 120, env=test_env, parse=_pytest_summary)
    r.run("tests_structures_torch", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                     "tests/test_device_structures.py", "tests/test_torch_adapter.py", "-m",
                                     "gpu or not slow"], 150, env=test_env, parse=_pytest_summary)
    for wl, limit in (("fused", 90), ("arxiv", 150)):
        _bench(r, wl, limit, out, cupy_env)
        if args.baseline:
            _bench(r, wl, limit, out, cupy_env, Path(args.baseline).resolve())
    r.run("breakdown", [py, me, "--step", "breakdown"], 60, env=cupy_env, parse=_result_line)
    r.run("tests_properties", pytest_cmd + ["-k", "parity"], 240, env=test_env, parse=_pytest_summary)
    _bench(r, "reddit", 240, out, cupy_env)
    # CPU-side: the layer against PyG on the CPU (needs torch and PyG, no GPU).
    try:
        import torch  # noqa: F401
        import torch_geometric  # noqa: F401

        r.run("layer_vs_pyg_cpu", [py, str(BENCH / "gatconv_gpu.py"), "--check-cpu"], 120, needs_gpu=False)
    except ImportError:
        r.results["steps"]["layer_vs_pyg_cpu"] = {"status": "skipped: torch or PyG not installed"}
    r.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r.results["failed"] = r.failed
    r.save()
    shutil.rmtree(cache, ignore_errors=True)
    print(f"results: {out / 'gpu_first_run.json'}; log: {out / 'gpu_first_run.log'}")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
