#!/usr/bin/env python
"""Registers, spills, shared memory and theoretical occupancy of every CUDA kernel of the
``cupy`` backend (``nvcc -Xptxas -v``), and the bytes each kernel moves, as markdown.

Needs ``nvcc`` only (no GPU): it compiles the backend's module source
(:func:`sparsegat.backends.cuda.launch.module_source`) with instantiations of every
kernel for the main template configurations, as CuPy compiles it (``-ftz=true``), and
reads ptxas's report. Occupancy is the theoretical one (registers, shared memory and the
warp and block limits of the architecture; no measurement). Without nvcc it says so and
exits 0.

Like ``bench/gpu_first_run.py``, it diagnoses the backend itself and so takes the kernel
names, sources and launch geometry from :mod:`sparsegat.backends.cuda.launch`.

The bytes model (``--bytes``) counts, per kernel and for one workload, the bytes the
kernel *requests* (per-edge gathers of ``k_j``, ``v_j``, ``q_i``, ``dout_i`` counted at
every edge: what L2 must serve) and its *compulsory* bytes (every array once: the DRAM
traffic with a perfect cache), and the time the compulsory bytes take at ``--gbps``.
These are predictions: compare them with kernel times measured on a GPU.

Usage::

    python bench/cuda_resources.py                         # sm_90 and sm_80, markdown
    python bench/cuda_resources.py --arch sm_90 --json r.json
    python bench/cuda_resources.py --bytes                 # also the bytes of the default workload
    python bench/cuda_resources.py --bytes-only --n 169343 --nnz 2484941 --heads 3 --d 64 --dv 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sparsegat  # noqa: E402
from sparsegat.spec import SCORE_CODES, SCORES  # noqa: E402

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
I32, I64 = np.dtype(np.int32), np.dtype(np.int64)


# ---------------------------------------------------------------------- from launch.py
# A diagnostic of the backend itself, so it uses the backend's own names and geometry.
from sparsegat.backends.cuda import launch  # noqa: E402

CUDA_DIR = launch.cuda_dir()
module_source = launch.module_source
helper_kernel_name = launch.helper_kernel_name
kernel_base_name = launch.kernel_base_name


def attention_kernel_name(kind: str, score: str, dtype: Any, index_dtype: Any, vec: int, nacc: int) -> str:
    """launch.attention_kernel_name of a template configuration (lpe is not a template parameter)."""
    return launch.attention_kernel_name(kind, score, dtype, index_dtype, launch.FeatureGeometry(vec, 32, nacc))


def geometry(score: str, D: int, Dv: int, itemsize: int) -> dict[str, int]:
    """launch.feature_geometry (aligned arrays) as a dict, with the segment length."""
    g = launch.feature_geometry(score, D, Dv, itemsize)
    return dict(vec=g.vec, lpe=g.lpe, nacc=g.nacc, tile=g.tile, groups=g.groups, segment_edges=g.segment_edges)


#: Template configurations reported: (label, dtype, index dtype, VEC, NACC, an example).
#: lpe is a launch parameter, not a template one: VEC 4 NACC 1 is the kernel of every
#: float32 feature size that is a multiple of 4 up to 128 (lpe 1..32).
CONFIGS = (
    ("f32/i32 vec4 nacc1", F32, I32, 4, 1, "D = Dv = 16..128 (lpe 4..32)"),
    ("f32/i32 vec1 nacc1", F32, I32, 1, 1, "odd sizes, e.g. D = 3, Dv = 5 (lpe 8)"),
    ("f32/i32 vec4 nacc4", F32, I32, 4, 4, "D = Dv = 512 (lpe 32, one tile)"),
    ("f64/i64 vec2 nacc1", F64, I64, 2, 1, "D = Dv = 8..64"),
)
ARCHS = ("sm_90", "sm_80")
#: Per-SM limits: registers, register allocation unit per warp, warps, blocks, shared
#: memory (bytes; the per-block reservation of 1 KB comes on top of a block's own).
SM_LIMITS = {
    "sm_90": dict(regs=65536, unit=256, warps=64, blocks=32, smem=233472, reserved=1024),
    "sm_80": dict(regs=65536, unit=256, warps=64, blocks=32, smem=167936, reserved=1024),
}
ATTENTION = ("sg_attn_fwd", "sg_attn_bwd_rows", "sg_attn_bwd_cols")
HELPERS = ("sg_attn_fwd_merge", "sg_attn_weights_fin", "sg_sum_partials", "sg_column_sum",
           "sg_unit_rows", "sg_unit_rows_bwd")
#: Threads per block of each kernel (launch.py).
BLOCK = {"sg_attn_fwd": 128, "sg_attn_bwd_rows": 128, "sg_attn_bwd_cols": 128, "sg_unit_rows": 128,
         "sg_unit_rows_bwd": 128, "sg_attn_fwd_merge": 256, "sg_attn_weights_fin": 256,
         "sg_sum_partials": 256, "sg_column_sum": 256}


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    path = os.path.join(home, "bin", "nvcc") if home else ""
    return path if path and os.path.exists(path) else None


def config_names(dtype: Any, index_dtype: Any, vec: int, nacc: int) -> list[str]:
    """Every kernel of one template configuration, all scores."""
    names: set[str] = set()
    for score in SCORES:
        names |= {attention_kernel_name(k, score, dtype, index_dtype, vec, nacc) for k in ATTENTION}
    names |= {helper_kernel_name(k, dtype, index_dtype) for k in HELPERS}
    return sorted(names)


def compile_report(nvcc: str, arch: str, names: list[str], workdir: Path, tag: str) -> tuple[str, Path]:
    """ptxas's verbose report of the module with ``names`` instantiated, and the cubin."""
    src = workdir / f"{tag}_{arch}.cu"
    src.write_text(module_source() + "\nvoid* sg_instantiated[] = {\n"
                   + ",\n".join(f"    (void*)&{n}" for n in names) + "\n};\n")
    cmd = [nvcc, "-std=c++17", f"-arch={arch}", "--cubin", "-Xptxas", "-v", "-ftz=true",
           "-o", str(workdir / f"{tag}_{arch}.cubin"), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{res.stderr[-4000:]}")
    return res.stdout + res.stderr, workdir / f"{tag}_{arch}.cubin"


def find_nvdisasm(nvcc: str) -> str | None:
    """nvdisasm beside nvcc, on PATH or in $NVDISASM (pip: nvidia-cuda-nvdisasm)."""
    for c in (os.environ.get("NVDISASM"), os.path.join(os.path.dirname(nvcc), "nvdisasm"), shutil.which("nvdisasm")):
        if c and os.path.exists(c):
            return c
    return None


def spills_in_loops(nvdisasm: str, cubin: Path) -> dict[str, tuple[int, int]]:
    """Per mangled kernel: the local-memory spill instructions (STL/LDL) that lie inside a
    loop of the SASS (between a backward branch and its target), and the deepest loop
    nesting among them. A spill outside every loop runs once per thread; at depth 1 in a
    warp kernel it runs once per batch of 32 edges (the index-load loop), deeper once per
    edge or feature step. Only branches of the main body
    (up to its last EXIT) count: the out-of-line blocks after it (the slow paths of the
    IEEE reciprocal, the shuffles' fallbacks for a diverged warp) jump back into the body
    without forming loops."""
    text = subprocess.run([nvdisasm, "-c", str(cubin)], capture_output=True, text=True).stdout
    res: dict[str, tuple[int, int]] = {}
    fn, labels, pending, branches, spills, last_exit = None, {}, [], [], [], 0

    def close() -> None:
        if fn is not None:
            loops = [(labels[t], a) for a, t in branches
                     if t in labels and labels[t] <= a and a <= last_exit]
            depths = [sum(1 for lo, hi in loops if lo <= x <= hi) for x in spills]
            res[fn] = (sum(1 for d in depths if d), max(depths, default=0))

    for line in text.splitlines():
        m = re.match(r"^\.text\.(\w+):", line)
        if m:
            close()
            fn, labels, pending, branches, spills, last_exit = m.group(1), {}, [], [], [], 0
            continue
        m = re.match(r"^(\.L\w+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*)", line)
        if not m or fn is None:
            continue
        addr, ins = int(m.group(1), 16), m.group(2)
        for lab in pending:
            labels[lab] = addr
        pending = []
        b = re.search(r"\bBRA\b.*`\((\.L\w+)\)", ins)
        if b:
            branches.append((addr, b.group(1)))
        if re.search(r"\b(STL|LDL)(\.\w+)*\b", ins):
            spills.append(addr)
        if re.search(r"\bEXIT\b", ins):
            last_exit = addr
    close()
    return res


def demangle(symbols: list[str]) -> dict[str, str]:
    """Mangled kernel symbol -> name expression (``sg_attn_fwd<float, int, 0, 4, 1>``)."""
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None or not symbols:
        return {s: s for s in symbols}
    out = subprocess.run([tool], input="\n".join(symbols), capture_output=True, text=True).stdout.splitlines()
    names = {}
    for sym, text in zip(symbols, out):
        m = re.match(r"(?:void\s+)?(\w+<[^()]*>)\(", text.strip())
        names[sym] = m.group(1) if m else text.strip()
    return names


def parse_report(text: str) -> dict[str, dict[str, int]]:
    """Per mangled kernel: registers, stack, spill stores/loads, shared and constant memory."""
    res: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = m.group(1)
            res[current] = dict(regs=0, stack=0, spill_st=0, spill_ld=0, smem=0, barriers=0)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            res[current].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            res[current]["regs"] = int(m.group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            res[current]["smem"] = int(sm.group(1)) if sm else 0
            bar = re.search(r"used (\d+) barriers", line)
            res[current]["barriers"] = int(bar.group(1)) if bar else 0
    return res


def occupancy(arch: str, regs: int, smem: int, threads: int) -> tuple[float, int, str]:
    """Theoretical occupancy (fraction of the SM's warps), resident blocks, the limiter."""
    lim = SM_LIMITS[arch]
    wpb = -(-threads // 32)
    per_warp = -(-max(regs, 1) * 32 // lim["unit"]) * lim["unit"]
    limits = {
        "registers": (lim["regs"] // per_warp) // wpb,
        "warps": lim["warps"] // wpb,
        "blocks": lim["blocks"],
        "shared memory": lim["smem"] // (smem + lim["reserved"]) if smem else 10**9,
    }
    blocks = min(limits.values())
    limiter = min(limits, key=lambda k: (limits[k], k != "warps"))
    return blocks * wpb / lim["warps"], blocks, limiter


def collect(nvcc: str, archs: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (arch, configuration, kernel name)."""
    rows: list[dict[str, Any]] = []
    nvdisasm = find_nvdisasm(nvcc)
    with tempfile.TemporaryDirectory(prefix="sg-cuda-res-") as tmp, ThreadPoolExecutor(2) as pool:
        jobs = {(arch, label): pool.submit(compile_report, nvcc, arch, config_names(dt, it, vec, nacc),
                                           Path(tmp), f"c{i}")
                for i, (label, dt, it, vec, nacc, _) in enumerate(CONFIGS) for arch in archs}
        for (arch, label), job in jobs.items():
            report, cubin = job.result()
            stats = parse_report(report)
            in_loops = spills_in_loops(nvdisasm, cubin) if nvdisasm else {}
            names = demangle(sorted(stats))
            for sym, s in stats.items():
                name = names[sym]
                base = kernel_base_name(name)
                occ, blocks, limiter = occupancy(arch, s["regs"], s["smem"], BLOCK.get(base, 128))
                rows.append(dict(arch=arch, config=label, name=name, kernel=base, **s, block=BLOCK.get(base, 128),
                                 occupancy=occ, blocks_per_sm=blocks, limiter=limiter,
                                 spills_in_loops=in_loops.get(sym)))
    return rows


def markdown(rows: list[dict[str, Any]], arch: str) -> str:
    """Attention kernels: registers (occupancy) per score and configuration; helpers below."""
    out = [f"#### {arch}: attention kernels, registers per thread (theoretical occupancy, 128-thread blocks)", ""]
    configs = [c[0] for c in CONFIGS]
    out.append("| kernel | score | " + " | ".join(configs) + " |")
    out.append("|---|---|" + "---|" * len(configs))
    by = {(r["config"], r["name"]): r for r in rows if r["arch"] == arch}
    spills = []
    for kernel in ATTENTION:
        for score in SCORES:
            cells = []
            for label, dt, it, vec, nacc, _ in CONFIGS:
                name = attention_kernel_name(kernel, score, dt, it, vec, nacc)
                r = by.get((label, name))
                if r is None:
                    cells.append("-")
                    continue
                cell = f"{r['regs']} ({r['occupancy']:.0%})"
                if r["spill_st"] or r["spill_ld"]:
                    cell += f" s{r['spill_st']}/{r['spill_ld']}"
                    if r["spills_in_loops"] and r["spills_in_loops"][0]:
                        cell += " (%d in loops, depth %d)" % tuple(r["spills_in_loops"])
                    spills.append(name)
                cells.append(cell)
            out.append(f"| `{kernel}` | {score} | " + " | ".join(cells) + " |")
    out += ["", f"#### {arch}: helper kernels", "",
            "| kernel | " + " | ".join(f"{c[1].name}/{c[2].name}" for c in (CONFIGS[0], CONFIGS[-1])) +
            " | block | shared memory |", "|---|---|---|---|---|"]
    for kernel in HELPERS:
        cells, smem = [], 0
        for label, dt, it, *_ in (CONFIGS[0], CONFIGS[-1]):
            name = helper_kernel_name(kernel, dt, it)
            r = by.get((label, name))
            if r is None:
                cells.append("-")
                continue
            smem = max(smem, r["smem"])
            cells.append(f"{r['regs']} ({r['occupancy']:.0%})")
        out.append(f"| `{kernel}` | " + " | ".join(cells) + f" | {BLOCK[kernel]} | {smem} B |")
    mine = [r for r in rows if r["arch"] == arch]
    n_spill = sum(1 for r in mine if r["spill_st"] or r["spill_ld"])
    checked = [r for r in mine if r["spills_in_loops"] is not None]
    in_loops = sorted(f"{r['name']} (depth {r['spills_in_loops'][1]})" for r in checked
                      if r["spills_in_loops"][0])
    loops = ("no SASS check (nvdisasm not found)" if not checked else
             f"spill instructions inside a loop (nvdisasm): {', '.join(in_loops)}" if in_loops else
             "none of them spills inside a loop (nvdisasm: every STL/LDL runs once per thread)")
    out += ["", f"`sN/M`: N bytes spill stores, M bytes spill loads. {len(mine)} instantiations on {arch}, "
                f"{n_spill} with spills; {loops}."]
    return "\n".join(out)


# ---------------------------------------------------------------------- bytes model
def bytes_model(n: int, nnz: int, heads: int, d: int, dv: int, itemsize: int = 4, idx: int = 4,
                score: str = "dot", edge_bias: bool = False) -> dict[str, dict[str, float]]:
    """Requested and compulsory bytes of each kernel of forward and backward on a square
    graph of ``n`` nodes and ``nnz`` edges (``d`` = 1 for additive), with the segment plans
    and feature tiles the backend would use."""
    b, H = itemsize, heads
    geom = geometry(score, d, dv, b)
    chunk = geom["segment_edges"]
    tiles = lambda width: max(1, -(-width // geom["tile"]))  # noqa: E731
    deg = nnz / max(n, 1)
    seg_per_row = max(1, math.ceil(deg / chunk))  # a regular graph: every row alike
    S = n * seg_per_row
    P = S if seg_per_row > 1 else 0               # slots of long rows
    n_long = n if seg_per_row > 1 else 0
    plan = (3 * S + 1) * idx
    eb = nnz * H * b if edge_bias else 0
    t_fwd, t_d, t_cols = tiles(dv), tiles(d), tiles(max(d, dv))
    res: dict[str, dict[str, float]] = {}

    def put(kernel: str, requested: float, compulsory: float) -> None:
        res[kernel] = dict(requested=float(requested), compulsory=float(compulsory))

    # forward: per tile the scores are recomputed (indices, q, k again); v and out split by tiles.
    qk_edge = nnz * H * d * b
    put("sg_attn_fwd",
        t_fwd * (plan + nnz * idx + S * H * d * b + qk_edge + eb) + nnz * H * dv * b
        + n * H * dv * b + 2 * n * H * b + P * H * (dv + 2) * b,
        plan + nnz * idx + n * H * d * b + n * H * d * b + n * H * dv * b + eb
        + n * H * dv * b + 2 * n * H * b + P * H * (dv + 2) * b)
    if n_long:
        m = P * H * (dv + 2) * b + n_long * H * (dv + 2) * b + (2 * n_long + 1) * idx
        put("sg_attn_fwd_merge", m, m)
    # backward, rows: Delta reads out_i and dout_i per (segment, head) and tile; per edge k_j
    # (score, then dq from L1) and v_j (dout_i . v_j); writes ds, a, dq.
    put("sg_attn_bwd_rows",
        t_d * (plan + nnz * idx + S * H * (d + 2 * dv + 2) * b + nnz * H * (d + dv) * b + eb) + 2 * nnz * H * b
        + n * H * d * b + P * H * d * b,
        plan + nnz * idx + n * H * (d + 2 * dv + 2) * b + n * H * (d + dv) * b + eb + 2 * nnz * H * b
        + n * H * d * b + P * H * d * b)
    if n_long:
        m = P * H * d * b + n_long * H * d * b + (2 * n_long + 1) * idx
        put("sg_sum_partials (dq)", m, m)
    # backward, columns: per edge (through t_perm) ds and a, q_i and dout_i; writes dk, dv.
    # ds and a of one edge are read through t_perm: the heads of one edge are adjacent
    # (neighbouring warps), so each edge costs max(32 B sector, H * b) per array.
    sector = max(32, H * b)
    put("sg_attn_bwd_cols",
        t_cols * (plan + 2 * nnz * idx + 2 * nnz * sector) + nnz * H * (d + dv) * b + n * H * d * b
        + n * H * (d + dv) * b + P * H * (d + dv) * b,
        plan + 2 * nnz * idx + 2 * nnz * H * b + n * H * (d + dv) * b + n * H * d * b
        + n * H * (d + dv) * b + P * H * (d + dv) * b)
    if n_long:
        m = P * H * (d + dv) * b + n_long * H * (d + dv) * b + 2 * (2 * n_long + 1) * idx
        put("sg_sum_partials (dk, dv)", m, m)
    # weights: the forward without values (scores written), then the finalisation.
    put("sg_attn_weights_fin", nnz * idx + 2 * nnz * H * b + 2 * nnz * H * b,
        nnz * idx + 2 * nnz * H * b + 2 * n * H * b)
    return res


def bytes_markdown(model: dict[str, dict[str, float]], gbps: float) -> str:
    out = ["| kernel | requested (MB) | compulsory (MB) | compulsory at %.0f GB/s (us) |" % gbps,
           "|---|---|---|---|"]
    for kernel, m in model.items():
        out.append(f"| `{kernel}` | {m['requested'] / 1e6:.1f} | {m['compulsory'] / 1e6:.1f} | "
                   f"{m['compulsory'] / (gbps * 1e3):.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--json", help="write every row (all instantiations) to this file")
    ap.add_argument("--bytes", action="store_true", help="also print the bytes model of one workload")
    ap.add_argument("--bytes-only", action="store_true", help="only the bytes model (no nvcc needed)")
    ap.add_argument("--n", type=int, default=100_000, help="nodes (square graph)")
    ap.add_argument("--nnz", type=int, default=1_600_000, help="edges")
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--d", type=int, default=128, help="query/key width (1 for additive)")
    ap.add_argument("--dv", type=int, default=128, help="value width")
    ap.add_argument("--score", default="dot", choices=list(SCORES))
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--int64", action="store_true")
    ap.add_argument("--gbps", type=float, default=4300.0, help="DRAM bandwidth for the time column (H200 copy: ~4300)")
    args = ap.parse_args(argv)

    if args.bytes or args.bytes_only:
        itemsize, idx = (8 if args.float64 else 4), (8 if args.int64 else 4)
        model = bytes_model(args.n, args.nnz, args.heads, 1 if args.score == "additive" else args.d, args.dv,
                            itemsize, idx, args.score)
        print(f"#### Bytes moved: {args.score}, n = {args.n:,}, nnz = {args.nnz:,}, H = {args.heads}, "
              f"D = {args.d}, Dv = {args.dv}, {'float64' if args.float64 else 'float32'}, "
              f"{'int64' if args.int64 else 'int32'} indices\n")
        print(bytes_markdown(model, args.gbps) + "\n")
        if args.bytes_only:
            return 0

    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found (PATH, CUDA_HOME): no resource table", file=sys.stderr)
        return 0
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    rows = collect(nvcc, tuple(args.arch))
    print(f"<!-- bench/cuda_resources.py: {version}; -std=c++17 --cubin -Xptxas -v -ftz=true -->\n")
    print("Configurations: " + "; ".join(f"{c[0]}: {c[5]}" for c in CONFIGS) + ".\n")
    for arch in args.arch:
        print(markdown(rows, arch) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(nvcc=version, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
