"""PyTorch Geometric's GAT example recipe on a Cora file: the reference for bench/cora_train.py.

The model, optimiser and loop of PyG's ``examples/gat.py`` (GATConv 8 heads x 8
hidden, ELU, a 1-head output layer with ``concat=False``, dropout 0.6 on inputs
and attention, Adam lr 0.005, weight decay 5e-4, 300 epochs, an evaluation after
every epoch, the test accuracy of the first epoch of best validation accuracy),
on the same ``cora.npz`` that ``sparsegat train --data`` reads (layout of
``docs/data.md``, read with :func:`sparsegat.datasets.load_npz`), with the
features row-normalised as ``T.NormalizeFeatures()`` does.

    python bench/pyg_cora_train.py --data path/to/cora.npz --seed 0 [--json]

Needs torch and torch_geometric (the ``pyg`` extra); not part of the library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch_geometric.nn import GATConv

    from sparsegat.bench.pyg import edge_index as pyg_edge_index
    from sparsegat.datasets import load_npz

    torch.manual_seed(a.seed)
    data = load_npz(a.data)
    x = data.x.toarray() if hasattr(data.x, "toarray") else np.asarray(data.x)
    x = torch.from_numpy(x.astype(np.float32, copy=False))
    x = x / x.sum(dim=-1, keepdim=True).clamp(min=1.0)          # T.NormalizeFeatures()
    edge_index = torch.from_numpy(pyg_edge_index(data.graph))
    y = torch.from_numpy(data.y)
    masks = {k: torch.from_numpy(getattr(data, f"{k}_mask")) for k in ("train", "val", "test")}
    classes = data.num_classes

    class GAT(torch.nn.Module):
        def __init__(self, in_channels: int, hidden: int, out_channels: int, heads: int) -> None:
            super().__init__()
            self.conv1 = GATConv(in_channels, hidden, heads, dropout=0.6)
            self.conv2 = GATConv(hidden * heads, out_channels, heads=1, concat=False, dropout=0.6)

        def forward(self, x, edge_index):
            x = F.dropout(x, p=0.6, training=self.training)
            x = F.elu(self.conv1(x, edge_index))
            x = F.dropout(x, p=0.6, training=self.training)
            return self.conv2(x, edge_index)

    model = GAT(x.shape[1], 8, classes, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005, weight_decay=5e-4)

    def train() -> float:
        model.train()
        optimizer.zero_grad()
        out = model(x, edge_index)
        loss = F.cross_entropy(out[masks["train"]], y[masks["train"]])
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def test() -> list[float]:
        model.eval()
        pred = model(x, edge_index).argmax(dim=-1)
        return [int((pred[m] == y[m]).sum()) / int(m.sum()) for m in masks.values()]

    best_val = test_acc = 0.0
    best_epoch = 0
    t0 = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        train()
        _, val_acc, tmp_test_acc = test()
        if val_acc > best_val:
            best_val, test_acc, best_epoch = val_acc, tmp_test_acc, epoch
    train_seconds = time.perf_counter() - t0
    result = {"test_accuracy": test_acc, "val_accuracy": best_val, "best_epoch": best_epoch,
              "epochs": a.epochs, "train_seconds": train_seconds,
              "total_seconds": time.perf_counter() - t_start, "seed": a.seed,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"PyG GAT on {a.data}: test accuracy {test_acc:.3f} at the best validation epoch {best_epoch} "
          f"(val {best_val:.3f}); {a.epochs} epochs in {train_seconds:.2f} s")
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
