"""Cora end to end: `sparsegat train` against PyTorch Geometric's GAT example, in the same run.

For each seed (default 0, 1, 2) it runs, as separate processes and alternately,

    sparsegat train --data CORA --seed S --json          (the GAT paper's recipe, our defaults)
    python bench/pyg_cora_train.py --data CORA --seed S --json   (PyG's examples/gat.py recipe)

and reports test accuracy at the best validation epoch, the training-loop time each
process reports, and the whole-process wall time (interpreter start, imports, data
loading, 300 epochs with an evaluation after each, exit) measured from here. One
untimed warm-up run of each comes first (file caches, numba's on-disk kernel
cache, Python bytecode), so neither side is charged for a first-ever start.
PyG runs twice per seed, with the environment as it is (``pyg``) and with
``OMP_WAIT_POLICY=PASSIVE`` (``pyg-passive``; ``sparsegat train`` sets that for
itself): torch's OpenMP workers spin like numba's do by default, which is about
10% faster on an idle machine and several times slower on a busy one. The
speed-up is computed against the faster of the two for each seed (``pyg-best``).
``--pyg-once`` runs only the first. The load average before and after each run
is recorded.

    python bench/cora_train.py --data path/to/cora.npz [--seeds 0,1,2] [--json OUT.json]

The data file has the layout of ``docs/data.md``. Needs torch and torch_geometric
for the PyG side (``--no-pyg`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from sparsegat.bench.timing import SubprocessError, run_json

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, dict]:
    """Whole-process wall time and JSON result of ``cmd``, with the load average around it."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        res = run_json(cmd, env)
    except SubprocessError as exc:
        sys.stderr.write(exc.output)
        raise SystemExit(f"failed ({exc}): {' '.join(cmd)}") from None
    wall = time.perf_counter() - t0
    res["load_average_before"], res["load_average_after"] = load0, os.getloadavg()[0]
    return wall, res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, metavar="FILE.npz", help="the Cora data file (layout of docs/data.md)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--no-pyg", action="store_true", help="time sparsegat alone")
    p.add_argument("--json", metavar="OUT.json", help="write every run's figures here")
    p.add_argument("--train-args", default="", help="extra arguments for sparsegat train (quoted)")
    p.add_argument("--pyg-once", action="store_true",
                   help="run PyG only with the environment as it is (not also with OMP_WAIT_POLICY=PASSIVE)")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    ours = [sys.executable, "-m", "sparsegat", "train", "--data", a.data, "--epochs", str(a.epochs), "--json",
            "--log-every", "0", *a.train_args.split()]
    pyg = [sys.executable, str(HERE / "pyg_cora_train.py"), "--data", a.data, "--epochs", str(a.epochs), "--json"]
    sides = {"sparsegat": ours}
    if not a.no_pyg:
        sides["pyg"] = pyg
        if not a.pyg_once:
            sides["pyg-passive"] = pyg
    plain = dict(os.environ)
    passive = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    envs = {"sparsegat": plain, "pyg": plain, "pyg-passive": passive}

    print(f"warm-up runs ({', '.join(sides)}) ...", file=sys.stderr, flush=True)
    for name, cmd in sides.items():
        timed([*cmd[:-3], "--seed", "0", "--epochs", "1", "--json"] if cmd is pyg else
              [*cmd, "--seed", "0", "--epochs", "1"], envs[name])

    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for seed in seeds:
        for name, cmd in sides.items():
            wall, res = timed([*cmd, "--seed", str(seed)], envs[name])
            res["wall_seconds"] = wall
            runs[name].append(res)
            print(f"{name:11s} seed {seed}: test {res['test_accuracy']:.3f} (best val {res['val_accuracy']:.3f} "
                  f"at epoch {res['best_epoch']}), training loop {res['train_seconds']:.2f} s, "
                  f"whole process {wall:.2f} s (load {res['load_average_before']:.1f} -> "
                  f"{res['load_average_after']:.1f})", file=sys.stderr, flush=True)

    def summary(name: str) -> dict:
        rs = runs[name]
        return {"test_accuracy": [r["test_accuracy"] for r in rs],
                "mean_test_accuracy": statistics.mean(r["test_accuracy"] for r in rs),
                "train_seconds": [r["train_seconds"] for r in rs],
                "wall_seconds": [r["wall_seconds"] for r in rs],
                "mean_wall_seconds": statistics.mean(r["wall_seconds"] for r in rs),
                "min_wall_seconds": min(r["wall_seconds"] for r in rs)}

    if "pyg-passive" in runs:
        runs["pyg-best"] = [min(r1, r2, key=lambda r: r["wall_seconds"])
                            for r1, r2 in zip(runs["pyg"], runs["pyg-passive"])]
    table = {name: summary(name) for name in runs}
    print(f"\nCora, {a.epochs} epochs with an evaluation after each, seeds {a.seeds}; "
          f"{os.cpu_count()} CPUs; backend {runs['sparsegat'][0].get('backend')}\n")
    print("| | test accuracy per seed | mean | training loop (s) | whole process (s) | mean whole process (s) |")
    print("|---|---|---|---|---|---|")
    for name, s in table.items():
        acc = " / ".join(f"{v:.3f}" for v in s["test_accuracy"])
        loop = " / ".join(f"{v:.2f}" for v in s["train_seconds"])
        wall = " / ".join(f"{v:.2f}" for v in s["wall_seconds"])
        print(f"| {name} | {acc} | {s['mean_test_accuracy']:.3f} | {loop} | {wall} | {s['mean_wall_seconds']:.2f} |")
    if "pyg" in table:
        ref = "pyg-best" if "pyg-best" in table else "pyg"
        speedup = table[ref]["mean_wall_seconds"] / table["sparsegat"]["mean_wall_seconds"]
        best = table[ref]["min_wall_seconds"] / table["sparsegat"]["min_wall_seconds"]
        print(f"\nagainst {ref}:", end="")
        print(f" whole-process speed-up {speedup:.1f}x on the means, {best:.1f}x on the fastest runs")
        table["speedup_whole_process"] = speedup
        table["speedup_fastest_runs"] = best
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": table, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
