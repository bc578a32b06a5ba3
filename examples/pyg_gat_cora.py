#!/usr/bin/env python
"""PyG's GAT recipe on Cora with ``sparsegat.torch.GATConv`` swapped in, beside PyG's own.

The model, optimiser and loop of PyTorch Geometric's ``examples/gat.py``: two
``GATConv`` layers (8 heads x 8 hidden, ELU, a 1-head output layer with
``concat=False``), dropout 0.6 on the inputs and on the attention, Adam (lr 0.005,
weight decay 5e-4), row-normalised features (``T.NormalizeFeatures()``), an
evaluation after every epoch, and the test accuracy of the first epoch with the best
validation accuracy. The only change for sparsegat is the import::

    from sparsegat.torch import GATConv        # instead of torch_geometric.nn.GATConv

For each seed the same script trains both models from the same initial weights (ours
are loaded from PyG's ``state_dict``); their attention-dropout masks differ (each
library draws its own), so accuracies agree in distribution, not run by run.

Cora is read with :func:`sparsegat.datasets.planetoid` from ``--root`` (default:
``$SPARSEGAT_DATA``, else ``~/.cache/sparsegat/planetoid``, downloading the raw files
when missing); ``--pyg-planetoid DIR`` reads it with PyG's ``Planetoid`` instead.

    python examples/pyg_gat_cora.py --seeds 0 1 2 --epochs 200

Needs torch and torch_geometric (the ``pyg`` extra).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def load_cora(root: str | None, pyg_dir: str | None) -> dict[str, Any]:
    """Features (row-normalised), edge_index, labels and the three masks, as tensors."""
    if pyg_dir is not None:
        import torch_geometric.transforms as T
        from torch_geometric.datasets import Planetoid

        data = Planetoid(pyg_dir, "Cora", transform=T.NormalizeFeatures())[0]
        return dict(x=data.x, edge_index=data.edge_index, y=data.y, num_classes=int(data.y.max()) + 1,
                    masks={"train": data.train_mask, "val": data.val_mask, "test": data.test_mask})
    from sparsegat.datasets import planetoid

    ds = planetoid("cora", root=root)
    x = torch.from_numpy(ds.x.toarray() if ds.features_sparse else np.asarray(ds.x)).float()
    x = x / x.sum(dim=-1, keepdim=True).clamp(min=1.0)  # T.NormalizeFeatures()
    g = ds.graph
    rows = np.repeat(np.arange(g.n_dst), np.diff(np.asarray(g.indptr)))
    edge_index = torch.from_numpy(np.stack([np.asarray(g.indices), rows]).astype(np.int64))
    masks = {k: torch.from_numpy(getattr(ds, f"{k}_mask")) for k in ("train", "val", "test")}
    return dict(x=x, edge_index=edge_index, y=torch.from_numpy(ds.y), num_classes=ds.num_classes, masks=masks)


class GAT(torch.nn.Module):
    """PyG's ``examples/gat.py`` model, for either library's ``GATConv``."""

    def __init__(self, conv: Any, in_channels: int, hidden: int, out_channels: int, heads: int) -> None:
        super().__init__()
        self.conv1 = conv(in_channels, hidden, heads, dropout=0.6)
        self.conv2 = conv(hidden * heads, out_channels, heads=1, concat=False, dropout=0.6)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, p=0.6, training=self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=0.6, training=self.training)
        return self.conv2(x, edge_index)


def train_and_test(model: torch.nn.Module, data: dict[str, Any], epochs: int, seed: int) -> dict[str, float]:
    """The recipe's loop: the test accuracy at the first epoch of best validation accuracy."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005, weight_decay=5e-4)
    x, ei, y, masks = data["x"], data["edge_index"], data["y"], data["masks"]
    best_val = test_acc = 0.0
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        optimizer.zero_grad()
        out = model(x, ei)
        F.cross_entropy(out[masks["train"]], y[masks["train"]]).backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            pred = model(x, ei).argmax(dim=-1)
        val, test = (float((pred[m] == y[m]).float().mean()) for m in (masks["val"], masks["test"]))
        if val > best_val:
            best_val, test_acc = val, test
    return {"test": test_acc, "val": best_val, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--root", help="folder of Cora's raw Planetoid files (default: $SPARSEGAT_DATA)")
    ap.add_argument("--pyg-planetoid", dest="pyg_dir", help="read Cora with PyG's Planetoid from this folder")
    ap.add_argument("--backend", help="sparsegat backend (numpy, numba, cupy); default: the registry's choice")
    a = ap.parse_args(argv)

    import torch_geometric.nn as pyg_nn

    import sparsegat.torch as st

    data = load_cora(a.root, a.pyg_dir)
    fin, classes = data["x"].shape[1], data["num_classes"]
    results: dict[str, list[dict[str, float]]] = {"PyG GATConv": [], "sparsegat.torch.GATConv": []}
    for seed in a.seeds:
        torch.manual_seed(seed)
        pyg = GAT(pyg_nn.GATConv, fin, 8, classes, 8)
        ours = GAT(lambda *args, **kw: st.GATConv(*args, backend=a.backend, **kw), fin, 8, classes, 8)
        ours.load_state_dict(pyg.state_dict())  # the same initial weights
        for name, model in (("PyG GATConv", pyg), ("sparsegat.torch.GATConv", ours)):
            r = train_and_test(model, data, a.epochs, seed)
            results[name].append(r)
            print(f"seed {seed}  {name:24s} test accuracy {r['test']:.3f} (best val {r['val']:.3f}), "
                  f"{a.epochs} epochs in {r['seconds']:.1f} s", flush=True)
    print()
    for name, rs in results.items():
        tests = [r["test"] for r in rs]
        spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
        print(f"{name:24s} test accuracy {statistics.mean(tests):.3f} +- {spread:.3f} over {len(tests)} seeds; "
              f"{statistics.mean(r['seconds'] for r in rs):.1f} s per run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
