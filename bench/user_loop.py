#!/usr/bin/env python
"""A user's own training loop against ``sparsegat train``: is the library fast by default?

``sparsegat train`` owns its process and tunes it (OpenMP waiting, BLAS threads, malloc:
``sparsegat._tuning``); a user's loop written as in ``docs/nn.md`` gets only what the
library does by itself. Both train the paper's two-layer GAT (8 heads x 8, dropout 0.6,
Adam) on the built-in synthetic data set for ``--epochs`` epochs with one evaluation per
epoch, each in a fresh process with the environment as it is (``OMP_WAIT_POLICY``,
``OPENBLAS_NUM_THREADS`` and the like removed, as on a machine nobody tuned), after one
untimed run of each that fills Numba's cache. The wall time of the loop (not of the
interpreter's start) is compared, ``--rounds`` times, alternating.

Usage::

    python bench/user_loop.py                # 300 epochs, 3 rounds
    python bench/user_loop.py --epochs 100 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

#: The user's loop of docs/nn.md (the paper's model), timed around the loop only.
USER_LOOP = """
import json, sys, time
import numpy as np
import sparsegat as sg

epochs = int(sys.argv[1])
data = sg.datasets.synthetic(seed=0)
x, g, y = data.x, data.graph, data.y
train_idx = np.flatnonzero(data.train_mask)
model = sg.nn.Sequential(
    sg.nn.Dropout(0.6, seed=0),
    sg.nn.GATConv(data.num_features, 8, heads=8, dropout=0.6, seed=1),
    sg.nn.ELU(),
    sg.nn.Dropout(0.6, seed=2),
    sg.nn.GATConv(64, data.num_classes, heads=1, concat=False, dropout=0.6, seed=3),
)
opt = sg.optim.Adam(model, lr=0.005, weight_decay=5e-4)
start = time.perf_counter()
for epoch in range(epochs):
    logits = model.forward(x, g, training=True)
    loss, dlogits = sg.nn.softmax_cross_entropy(logits, y, train_idx)
    model.backward(dlogits)
    opt.step()
    val_acc = sg.nn.accuracy(model.forward(x, g), y, data.val_mask)
print(json.dumps({"seconds": time.perf_counter() - start, "val_acc": float(val_acc)}))
"""

#: Environment variables that tune thread pools; removed so both runs start untuned.
TUNING_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def untuned_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in TUNING_VARIABLES}


def run_user_loop(epochs: int) -> dict:
    out = subprocess.run([sys.executable, "-c", USER_LOOP, str(epochs)], env=untuned_env(), check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cli(epochs: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "sparsegat", "train", "--epochs", str(epochs), "--json"],
                         env=untuned_env(), check=True, capture_output=True, text=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": float(doc["train_seconds"]), "doc": doc}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    run_user_loop(2), run_cli(2)  # fill Numba's cache: compile time is not the point here
    user, cli = [], []
    for _ in range(args.rounds):
        user.append(run_user_loop(args.epochs)["seconds"])
        cli.append(run_cli(args.epochs)["seconds"])
    u, c = sorted(user)[len(user) // 2], sorted(cli)[len(cli) // 2]
    print(f"{args.epochs} epochs on the synthetic data set, median of {args.rounds} rounds:")
    print(f"  user's loop (docs/nn.md): {u:.2f} s   (all: {', '.join(f'{t:.2f}' for t in user)})")
    print(f"  sparsegat train:          {c:.2f} s   (all: {', '.join(f'{t:.2f}' for t in cli)})")
    print(f"  ratio: {u / c:.2f}x (target: at most 1.3x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"epochs": args.epochs, "user_s": user, "cli_s": cli, "ratio": u / c}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
