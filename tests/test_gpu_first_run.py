"""``bench/gpu_first_run.py`` and ``bench/gpu_smoke.py`` as far as a machine without a GPU
allows: the CPU-side steps run, every GPU step is recorded as skipped, the JSON holds
every step; the smoke graph has the shapes the smoke test relies on."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsegat.backends.cuda import launch

BENCH = Path(__file__).resolve().parent.parent / "bench"
HAS_GPU = importlib.util.find_spec("cupy") is not None


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU path; on a GPU machine run the script itself")
def test_first_run_without_gpu_records_every_step(tmp_path):
    res = subprocess.run([sys.executable, str(BENCH / "gpu_first_run.py"), "--out", str(tmp_path),
                          "--budget", "120"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "gpu_first_run.json").read_text())
    steps = report["steps"]
    assert report["gpu"] is False and report["failed"] is False
    gpu_steps = {"compile_options", "compile_time_1", "compile_time_2", "smoke", "resources", "tests_tiny", "breakdown",
                 "tests_structures_torch",
                 "tests_bitwise", "tests_properties", "bench_fused", "bench_arxiv", "bench_reddit"}
    assert gpu_steps <= set(steps)
    assert all(steps[s]["status"] == "skipped: no GPU" for s in gpu_steps)
    for tool in ("memcheck", "synccheck", "racecheck"):
        assert steps[tool]["status"].startswith("skipped")
    env = steps["environment"]
    assert env["status"] == "ok" and env["result"]["numpy"] == np.__version__
    assert steps["layer_vs_pyg_cpu"]["status"] in ("ok", "skipped: torch or PyG not installed")
    assert (tmp_path / "gpu_first_run.log").is_file()


def test_first_run_budget_skips_steps_it_cannot_fit(tmp_path):
    runner = _load("gpu_first_run").Runner(tmp_path, budget=8, gpu=True)
    runner.run("slow", [sys.executable, "-c", "print('never')"], 60, min_s=10)
    assert runner.results["steps"]["slow"]["status"].startswith("skipped:")
    runner.run("fails", [sys.executable, "-c", "import sys; sys.exit(3)"], 60, needs_gpu=False, min_s=0)
    assert runner.results["steps"]["fails"]["status"] == "FAILED" and runner.failed


def test_pytest_summary_is_read_with_or_without_rules():
    first_run = _load("gpu_first_run")
    assert first_run._pytest_summary("...\n3 passed, 10 deselected in 2.17s\n") == "3 passed, 10 deselected in 2.17s"
    assert first_run._pytest_summary("== 1 failed, 2 passed in 0.50s ==") == "1 failed, 2 passed in 0.50s"
    assert first_run._pytest_summary("no tests ran") == ""


def test_smoke_graph_covers_empty_hub_rows_and_a_hub_column():
    smoke = _load("gpu_smoke")
    for index_dtype in (np.int32, np.int64):
        g = smoke.smoke_graph(40, 1200, hub=smoke.HUB, index_dtype=index_dtype)
        deg = np.diff(g.indptr)
        assert g.shape == (40, 1200) and g.indices.dtype == index_dtype
        assert deg[0] == 0  # an empty row
        # a row cut into several segments (merge kernels) whatever the lane geometry
        assert deg[1] > max(launch.feature_geometry("dot", D, D, 4).segment_edges for D in (1, 8, 128))
        assert np.count_nonzero(g.indices == 0) >= 38  # a hub column
    assert len(smoke.configurations(quick=False)) == 24 and len(smoke.configurations(quick=True)) == 3


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU path")
def test_smoke_without_gpu_exits_2():
    res = subprocess.run([sys.executable, str(BENCH / "gpu_smoke.py"), "--quick"], capture_output=True, text=True)
    assert res.returncode == 2 and "needs CuPy" in res.stderr
