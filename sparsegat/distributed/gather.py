"""Moving rows between blocks: halo gathers and fixed-order reductions (Dask tasks).

Every function here builds ``dask.delayed`` tasks over lists of per-chunk or
per-block ``Delayed`` objects; nothing is computed. Two primitives:

- :func:`gather_rows`: for every block, the rows of a row-chunked node array at
  the block's halo (one small ``take`` task per (block, chunk) pair that meets, run
  where the chunk lives, then one concatenation): only the rows a block reads move.
- :func:`scatter_sum` and :func:`tree_sum`: the inverse, for gradients. Every block's
  partial over its halo is cut at the owners' chunk bounds and added into the
  owner's rows along a binary tree over block indices ``0 .. P-1`` whose shape
  depends only on ``P``: the same additions in the same order on every run, on any
  number of workers, in any scheduling order, so the sums are bitwise repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..arrays import namespace
from .partition import PartitionedGraph

__all__ = ["GatherPlan", "gather_plan", "gather_rows", "scatter_sum", "tree_sum", "chunk_bounds"]


def chunk_bounds(chunks: Sequence[int]) -> np.ndarray:
    """Row bounds ``(nchunks + 1,)`` of a Dask array's row chunks."""
    return np.concatenate([[0], np.cumsum(np.asarray(chunks, dtype=np.int64))]).astype(np.int64)


@dataclass(frozen=True)
class Piece:
    """The part of block ``block``'s halo ``[lo, hi)`` that lies in chunk ``chunk``,
    at rows ``rows`` of that chunk."""

    block: int
    chunk: int
    lo: int
    hi: int
    rows: np.ndarray


@dataclass(frozen=True)
class GatherPlan:
    """Which rows of which chunk every block reads (and, backwards, writes).

    ``by_block[b]``: the pieces of block ``b`` in chunk order (their concatenation is
    its halo, sorted); ``by_chunk[c]``: the pieces in chunk ``c`` in block order.
    """

    bounds: np.ndarray
    by_block: list[list[Piece]]
    by_chunk: list[list[Piece]]

    @property
    def chunk_sizes(self) -> np.ndarray:
        return np.diff(self.bounds)


def gather_plan(pg: PartitionedGraph, chunks: Sequence[int]) -> GatherPlan:
    """The plan for a node array with row chunks ``chunks`` (cached on ``pg`` per chunking)."""
    key = ("plan", tuple(int(c) for c in chunks))
    if key in pg._dask:
        return pg._dask[key]
    bounds = chunk_bounds(chunks)
    by_block: list[list[Piece]] = []
    by_chunk: list[list[Piece]] = [[] for _ in range(len(bounds) - 1)]
    for block in pg.blocks:  # loops over blocks and chunks only; rows move as arrays
        cuts = np.searchsorted(block.halo, bounds)
        mine = []
        for c in np.flatnonzero(cuts[1:] > cuts[:-1]):
            lo, hi = int(cuts[c]), int(cuts[c + 1])
            rows = block.halo[lo:hi] - bounds[c]
            rows = rows.astype(np.int32 if bounds[c + 1] - bounds[c] <= np.iinfo(np.int32).max else np.int64)
            piece = Piece(block.index, int(c), lo, hi, rows)
            mine.append(piece)
            by_chunk[int(c)].append(piece)
        by_block.append(mine)
    plan = GatherPlan(bounds, by_block, by_chunk)
    pg._dask[key] = plan
    return plan


# ---------------------------------------------------------------------- task bodies
def _take(chunk: Any, rows: np.ndarray) -> Any:
    xp = namespace(chunk)
    return xp.take(chunk, xp.asarray(rows), axis=0)


def _concat(template: Any, *pieces: Any) -> Any:
    if not pieces:  # a block without edges reads nothing
        xp = namespace(template)
        return xp.empty((0,) + tuple(template.shape[1:]), dtype=template.dtype)
    if len(pieces) == 1:
        return pieces[0]
    xp = namespace(pieces[0])
    return xp.concatenate(pieces, axis=0)


def _scatter_piece(partial: Any, lo: int, hi: int, rows: np.ndarray, n_rows: int) -> Any:
    """Rows ``lo:hi`` of a block's halo partial placed at ``rows`` of a zero chunk (each row
    once: an assignment, exact)."""
    xp = namespace(partial)
    out = xp.zeros((n_rows,) + tuple(partial.shape[1:]), dtype=partial.dtype)
    out[xp.asarray(rows)] = partial[lo:hi]
    return out


def _zeros_rows(like: Any, n_rows: int) -> Any:
    xp = namespace(like)
    return xp.zeros((n_rows,) + tuple(like.shape[1:]), dtype=like.dtype)


def _add(a: Any, b: Any) -> Any:
    return a + b


# ---------------------------------------------------------------------- graph builders
def gather_rows(chunks: Sequence[Any], plan: GatherPlan, name: str) -> list[Any]:
    """Per block, the rows of the chunked node array (``chunks``: one ``Delayed`` per
    row chunk) at the block's halo, in halo order."""
    from dask import delayed

    take = delayed(_take, pure=False)
    concat = delayed(_concat, pure=False)
    out = []
    empty = None
    for b, pieces in enumerate(plan.by_block):
        parts = [take(chunks[p.chunk], p.rows, dask_key_name=f"{name}-take-{b}-{p.chunk}") for p in pieces]
        if not parts and empty is None:  # a 0-row template, made where chunk 0 lives
            empty = delayed(_zeros_rows, pure=False)(chunks[0], 0, dask_key_name=f"{name}-empty")
        out.append(concat(None if parts else empty, *parts, dask_key_name=f"{name}-halo-{b}"))
    return out


def tree_sum(items: Sequence[Any], name: str) -> Any:
    """The sum of ``items`` (``Delayed`` or None for nothing) along a binary tree over
    their positions: ``(items[0..m) ) + (items[m..n))`` with ``m = ceil(n / 2)``, the
    same tree for the same ``n`` whatever is present, so the result is bitwise repeatable.
    Returns None when every item is None."""
    from dask import delayed

    add = delayed(_add, pure=False)

    def node(lo: int, hi: int) -> Any:
        if hi - lo == 1:
            return items[lo]
        mid = lo + (hi - lo + 1) // 2
        left, right = node(lo, mid), node(mid, hi)
        if left is None or right is None:
            return right if left is None else left
        return add(left, right, dask_key_name=f"{name}-sum-{lo}-{hi}")

    return node(0, len(items)) if items else None


def scatter_sum(partials: Sequence[Any], plan: GatherPlan, name: str) -> list[Any]:
    """Per chunk of the owners' chunking, the sum of every block's halo partial
    (``partials[b]``: rows in the order of block ``b``'s halo) over the chunk's rows,
    added along :func:`tree_sum`'s tree over block indices."""
    from dask import delayed

    scatter = delayed(_scatter_piece, pure=False)
    zeros = delayed(_zeros_rows, pure=False)
    n_blocks = len(partials)
    out = []
    for c, pieces in enumerate(plan.by_chunk):
        n_rows = int(plan.bounds[c + 1] - plan.bounds[c])
        leaves: list[Any] = [None] * n_blocks
        for p in pieces:
            leaves[p.block] = scatter(partials[p.block], p.lo, p.hi, p.rows, n_rows,
                                      dask_key_name=f"{name}-piece-{c}-{p.block}")
        total = tree_sum(leaves, f"{name}-{c}")
        out.append(total if total is not None else zeros(partials[0], n_rows, dask_key_name=f"{name}-zero-{c}"))
    return out
