"""Launch geometry and orchestration of the CUDA kernels, without CuPy.

The ``cupy`` backend (:mod:`sparsegat.backends.cuda.backend`) is a thin shell
around this module: it supplies a :class:`Runtime` whose array namespace is CuPy and
whose ``launch`` calls ``cupy.RawModule`` kernels. The tests supply a runtime whose
namespace is NumPy and whose ``launch`` runs the very same ``.cu`` sources compiled
for the host CPU against ``tests/cuda_emulation/cuda_emu.h``. Everything between the
public API and a kernel launch (segment plans, scratch buffers, launch geometry, the
exact C type of every argument, merge and reduction passes) is therefore the same
code in the emulated tests and on a GPU.

Importing this module never imports CuPy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ...arrays import to_numpy
from ...spec import COSINE_EPS, ROW_LOG_DENOM, ROW_MAX, SCORE_CODES, AttentionSpec

#: Threads of a warp; the kernels assume 32.
WARP = 32
#: Warps per block of the warp-per-(segment, head) kernels (128 threads).
WARPS_PER_BLOCK = 4
#: Threads per block of the element-wise kernels (merges, weight finalisation).
ELEMENTWISE_THREADS = 256
#: Largest grid.x used by the grid-stride element-wise kernels.
MAX_ELEMENTWISE_BLOCKS = 65535
#: A row (or a column of the transposed structure) with more edges than a call's
#: segment length (``FeatureGeometry.segment_edges``) is split into segments of at most
#: that many edges, each handled by its own warp; the per-segment partials are merged in
#: segment order (deterministic). The length is SEGMENT_ITERATIONS serial steps of each
#: of the G = 32 / lpe groups of lanes, 32 * G edges (a fixed 256 gave a warp of one
#: group, lpe = 32, 256 serial steps, and one of 32 groups only 8)...
SEGMENT_ITERATIONS = 32
#: ...but at least this many edges, so rows up to this long are never split and merged.
SEGMENT_MIN_EDGES = 64
#: The segment length of 8 groups (lpe = 4); the default of plans made without a geometry.
SEGMENT_EDGES = SEGMENT_ITERATIONS * 8
#: Most accumulator vectors per lane (registers); wider feature axes use more tiles.
MAX_NACC = 4
#: Rows per block of the column-sum kernel, at least.
COLSUM_ROWS = 512
#: Most blocks along y of one column-sum pass.
COLSUM_MAX_CHUNKS = 4096

C_FLOAT = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
C_INDEX = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}

#: The kernel sources, in the order they are concatenated into one module.
SOURCE_FILES = ("common.cuh", "forward.cu", "backward.cu")
#: Which source defines which kernel (the compile tests instantiate per file).
KERNEL_FILES = {
    "sg_attn_fwd": "forward.cu",
    "sg_attn_fwd_merge": "forward.cu",
    "sg_attn_weights_fin": "forward.cu",
    "sg_unit_rows": "forward.cu",
    "sg_unit_rows_bwd": "backward.cu",
    "sg_attn_bwd_rows": "backward.cu",
    "sg_attn_bwd_cols": "backward.cu",
    "sg_sum_partials": "backward.cu",
    "sg_column_sum": "backward.cu",
}
#: Compiler options of the RawModule (NVRTC).
NVRTC_OPTIONS = ("--std=c++17",)
#: What CuPy's RawModule adds to ``NVRTC_OPTIONS`` before NVRTC sees them (CuPy 13.6 to
#: 14.2), besides the architecture (``-arch=sm_XX``, or ``compute_XX`` for PTX) and
#: ``-I`` paths (unused: the source includes nothing): ``-ftz=true`` in
#: ``_compile_with_cache_cuda`` and ``--device-as-default-execution-space`` (NVRTC >= 12)
#: in ``compile_using_nvrtc``, both in ``cupy/cuda/compiler.py``. ``--std=c++14`` is added
#: only when no ``-std`` is given (``assemble_cupy_compiler_options``,
#: ``cupy/_core/_compile_with_cache.pyx``; ``core.pyx`` before the split), so ours stands.
#: ``-ftz=true`` flushes float32 subnormals to zero (docs/cuda.md); the compile tests use
#: ``NVRTC_OPTIONS + CUPY_ADDED_OPTIONS`` and the emulation flushes float32 the same way.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
#: The null pointer of a launch: 8 zero bytes. CuPy before 14.0 passes ``None`` as a
#: pointer to an empty slot, a non-null garbage address (cupy/cupy#9046), so an absent
#: array is passed as this on every CuPy version, never as ``None``.
NULL = np.uint64(0)


def cuda_dir() -> Path:
    """The folder holding the ``.cu`` / ``.cuh`` sources (package data)."""
    return Path(__file__).resolve().parent


def module_source() -> str:
    """All kernel sources as one translation unit, local includes inlined.

    Inlining (rather than ``-I``) makes the source text carry every byte that is
    compiled, so CuPy's on-disk kernel cache, keyed by the source, never serves a
    stale binary after a header changes.
    """
    parts = []
    for name in SOURCE_FILES:
        text = (cuda_dir() / name).read_text()
        parts.append(re.sub(r'^\s*#include\s+"[^"]+"\s*$', "", text, flags=re.M))
    return "\n".join(parts)


# ---------------------------------------------------------------------- runtime protocol
class Runtime(Protocol):
    """What the orchestration needs from an execution environment."""

    #: The array namespace (``numpy`` or ``cupy``).
    xp: Any

    def prepare(self, names: Sequence[str]) -> None:
        """Make the kernels ``names`` (name expressions) ready to launch."""

    def launch(self, name: str, grid: tuple[int, int, int], block: tuple[int, int, int],
               args: tuple) -> None:
        """Launch kernel ``name``; ``args`` are arrays or NumPy scalars whose dtypes are
        exactly the kernel's C parameter types. An absent pointer is :data:`NULL`
        (``np.uint64(0)``), never ``None``: CuPy < 14 passes ``None`` as a non-null
        pointer (cupy/cupy#9046)."""

    def pointer(self, a: Any) -> int:
        """Address of the first element of array ``a``."""


# ---------------------------------------------------------------------- geometry
def _pow2_ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class FeatureGeometry:
    """How a warp's lanes cover the feature axes of one call.

    ``lpe`` lanes per edge (a power of two <= 32, so a warp works on ``32 // lpe``
    edges at once), ``vec`` elements per vector load, ``nacc`` accumulator vectors per
    lane: a tile of ``lpe * vec * nacc`` features per warp, more tiles along grid.y.
    """

    vec: int
    lpe: int
    nacc: int

    @property
    def tile(self) -> int:
        return self.lpe * self.vec * self.nacc

    @property
    def groups(self) -> int:
        return WARP // self.lpe

    def tiles(self, width: int) -> int:
        """Tiles needed to cover ``width`` features (at least one)."""
        return max(1, _cdiv(width, self.tile))

    @property
    def segment_edges(self) -> int:
        """Edges per row segment: about ``SEGMENT_ITERATIONS`` steps of every group."""
        return max(SEGMENT_MIN_EDGES, SEGMENT_ITERATIONS * self.groups)


def feature_geometry(score: str, D: int, Dv: int, itemsize: int, aligned: bool = True) -> FeatureGeometry:
    """Lane layout for a call with feature sizes ``D`` (1 for additive) and ``Dv`` (0 for weights).

    Vector loads of 16 bytes are used when every vectorised feature axis is a
    multiple of the vector width and every array is 16-byte aligned (``aligned``).
    """
    vmax = 16 // itemsize
    dims = [Dv] if score == "additive" else [D, Dv]
    dims = [x for x in dims if x > 0]
    vec = vmax if aligned and all(x % vmax == 0 for x in dims) else 1
    width = max([1] + dims)
    nvec = _cdiv(width, vec)
    lpe = min(WARP, _pow2_ceil(nvec))
    nacc = min(MAX_NACC, _pow2_ceil(_cdiv(nvec, lpe)))
    return FeatureGeometry(vec, lpe, nacc)


def warp_launch(n_items: int, heads: int, n_tiles: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Grid and block of a warp-per-(item, head) kernel: ``WARPS_PER_BLOCK`` warps a block."""
    blocks = _cdiv(n_items * heads, WARPS_PER_BLOCK)
    if blocks > 2**31 - 1 or n_tiles > 65535:
        raise ValueError(f"launch too large for one grid: {n_items} segments x {heads} heads, {n_tiles} tiles")
    return (blocks, n_tiles, 1), (WARP * WARPS_PER_BLOCK, 1, 1)


def elementwise_launch(n: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Grid and block of a grid-stride element-wise kernel over ``n`` items."""
    blocks = max(1, min(MAX_ELEMENTWISE_BLOCKS, _cdiv(n, ELEMENTWISE_THREADS)))
    return (blocks, 1, 1), (ELEMENTWISE_THREADS, 1, 1)


def colsum_rows_per_block(R: int) -> int:
    """Rows summed by one block of a column-sum pass over ``R`` rows."""
    return max(COLSUM_ROWS, _cdiv(R, COLSUM_MAX_CHUNKS))


# ---------------------------------------------------------------------- kernel names
_VALUE_ONLY_KERNELS = ("sg_column_sum", "sg_unit_rows", "sg_unit_rows_bwd")


def attention_kernel_name(kind: str, score: str, dtype: Any, index_dtype: Any, geom: FeatureGeometry) -> str:
    """Name expression of ``sg_attn_fwd`` / ``sg_attn_bwd_rows`` / ``sg_attn_bwd_cols``."""
    return (f"{kind}<{C_FLOAT[np.dtype(dtype)]}, {C_INDEX[np.dtype(index_dtype)]}, "
            f"{SCORE_CODES[score]}, {geom.vec}, {geom.nacc}>")


def helper_kernel_name(kind: str, dtype: Any, index_dtype: Any = None) -> str:
    """Name expression of the merge / reduction / normalisation kernels."""
    if kind in _VALUE_ONLY_KERNELS:
        return f"{kind}<{C_FLOAT[np.dtype(dtype)]}>"
    return f"{kind}<{C_FLOAT[np.dtype(dtype)]}, {C_INDEX[np.dtype(index_dtype)]}>"


def config_kernel_names(score: str, dtype: Any, index_dtype: Any, geom: FeatureGeometry) -> list[str]:
    """Every kernel a call of this configuration may launch (one RawModule)."""
    names = [attention_kernel_name(kind, score, dtype, index_dtype, geom)
             for kind in ("sg_attn_fwd", "sg_attn_bwd_rows", "sg_attn_bwd_cols")]
    names += [helper_kernel_name(kind, dtype, index_dtype)
              for kind in ("sg_attn_fwd_merge", "sg_attn_weights_fin", "sg_sum_partials", "sg_column_sum")]
    if score == "cosine":
        names += [helper_kernel_name(kind, dtype) for kind in ("sg_unit_rows", "sg_unit_rows_bwd")]
    return names


def kernel_base_name(name: str) -> str:
    """``"sg_attn_fwd<float, int, 0, 4, 1>"`` -> ``"sg_attn_fwd"``."""
    return name.split("<", 1)[0].strip()


# ---------------------------------------------------------------------- segment plans
@dataclass(frozen=True)
class SegmentPlan:
    """Rows (or columns) cut into segments of at most ``SEGMENT_EDGES`` edges.

    Segment ``s`` covers edge positions ``[seg_ptr[s], seg_ptr[s + 1])`` of row
    ``seg_row[s]``; every row has at least one segment (empty rows an empty one, so
    their outputs are written as zeros). Rows with several segments ("long rows")
    write partials to slot ``seg_slot[s]`` (-1 for single-segment rows); long row
    ``r`` is row ``long_row[r]`` and owns slots ``[long_ptr[r], long_ptr[r + 1])``.
    """

    seg_ptr: Any
    seg_row: Any
    seg_slot: Any
    long_row: Any
    long_ptr: Any
    n_seg: int
    n_long: int
    n_slots: int


def build_segment_plan(indptr: Any, chunk: int, index_dtype: Any) -> dict[str, Any]:
    """The arrays of a :class:`SegmentPlan` for CSR ``indptr``, built where ``indptr`` lives.

    Parameters
    ----------
    indptr : array of int, shape (n + 1,)
        Row pointers, NumPy or CuPy: the plan is computed with that array's namespace
        (on the GPU for a CuPy array, without a round trip through the host).
    chunk : int
        Most edges of a segment.
    index_dtype : dtype
        int32 or int64, the dtype of the plan's arrays.

    Returns
    -------
    dict
        ``seg_ptr, seg_row, seg_slot, long_row, long_ptr`` (arrays of ``index_dtype`` on
        the device of ``indptr``, the same values whatever the device) and ``n_seg, n_long,
        n_slots`` (Python ints: two scalars read back from the device).
    """
    from ...arrays import namespace
    from ...csr_format import row_ids

    xp = namespace(indptr)

    def exclusive_cumsum(counts: Any) -> Any:  # [0, c0, c0 + c1, ...] in int64
        return xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(counts, dtype=xp.int64)])

    indptr = xp.asarray(indptr).astype(xp.int64)
    n = indptr.shape[0] - 1
    deg = indptr[1:] - indptr[:-1]
    # Ceiling divisions of non-negative numbers, written without negation.
    nseg = xp.maximum(1, (deg + (chunk - 1)) // chunk)
    size = (deg + nseg - 1) // nseg  # balanced segment length of each row
    first = exclusive_cumsum(nseg)
    n_seg = int(first[-1])
    dtype = np.dtype(index_dtype)
    if n_seg * 2 > np.iinfo(dtype).max:
        raise ValueError(f"graph too large for {dtype} segment plans ({n_seg} segments)")
    seg_row = row_ids(first, np.int64)  # repeat(arange(n), nseg); cupy.repeat takes no array of counts
    local = xp.arange(n_seg, dtype=xp.int64) - first[seg_row]
    begin = xp.minimum(indptr[seg_row] + local * size[seg_row], indptr[seg_row + 1])
    seg_ptr = xp.concatenate([begin, indptr[-1:]])
    multi = (nseg[seg_row] > 1).astype(xp.int64)
    seg_slot = xp.where(multi > 0, xp.cumsum(multi) - 1, -1)
    long_row = xp.flatnonzero(nseg > 1)
    long_ptr = exclusive_cumsum(nseg[long_row])
    conv = (lambda a: xp.ascontiguousarray(a.astype(dtype, copy=False)))
    return dict(seg_ptr=conv(seg_ptr), seg_row=conv(seg_row), seg_slot=conv(seg_slot),
                long_row=conv(long_row), long_ptr=conv(long_ptr), n_seg=n_seg,
                n_long=int(long_row.shape[0]), n_slots=int(long_ptr[-1]))


def _plan(g: Any, which: str, xp: Any, chunk: int = SEGMENT_EDGES) -> SegmentPlan:
    """The row (``which="rows"``) or column plan of ``g``, cached on the graph.

    Built in the runtime's namespace ``xp`` (on the GPU for CuPy), from the graph's
    ``indptr`` or the pointers of its transposed structure, itself built on the graph's
    device.
    """

    def build() -> SegmentPlan:
        indptr = g.indptr if which == "rows" else g.transposed()[0]
        return SegmentPlan(**build_segment_plan(xp.asarray(indptr), chunk, g.index_dtype))

    return g.cached(f"cuda.{which}_plan.{chunk}", build)


# ---------------------------------------------------------------------- argument helpers
def nullable(a: Any) -> Any:
    """The launch argument of an optional array: ``a`` itself, or :data:`NULL` when absent."""
    return NULL if a is None else a


def _aligned(rt: Runtime, *arrays: Any) -> bool:
    return all(a is None or a.size == 0 or rt.pointer(a) % 16 == 0 for a in arrays)


class _Call:
    """Everything one attention call derives from its inputs."""

    def __init__(self, g: Any, q: Any, k: Any, v: Any, att: Any, spec: AttentionSpec,
                 rt: Runtime, aligned_arrays: Sequence[Any]) -> None:
        self.g, self.spec, self.rt, self.xp = g, spec, rt, rt.xp
        self.score = spec.score
        self.dtype = np.dtype(q.dtype)
        self.T = self.dtype.type
        self.index_dtype = np.dtype(g.index_dtype)
        self.H = int(q.shape[1])
        self.additive = spec.score == "additive"
        self.D = 1 if self.additive else int(q.shape[2])
        self.Dv = 0 if v is None else int(v.shape[2])
        self.geom = feature_geometry(self.score, self.D, self.Dv, self.dtype.itemsize,
                                     _aligned(rt, *aligned_arrays))
        self.names = config_kernel_names(self.score, self.dtype, self.index_dtype, self.geom)
        rt.prepare(self.names)

    def name(self, kind: str) -> str:
        if kind in ("sg_attn_fwd", "sg_attn_bwd_rows", "sg_attn_bwd_cols"):
            return attention_kernel_name(kind, self.score, self.dtype, self.index_dtype, self.geom)
        return helper_kernel_name(kind, self.dtype, self.index_dtype)

    def score_inputs(self, q: Any, k: Any) -> tuple[Any, Any, tuple]:
        """``(q, k)`` as the attention kernels read them (unit rows for cosine) and the
        normalisation state ``(qhat, q_norm, khat, k_norm)`` (empty otherwise)."""
        if self.score != "cosine":
            return q, k, ()
        qh, qn = self.unit_rows(q)
        kh, kn = self.unit_rows(k)
        return qh, kh, (qh, qn, kh, kn)

    def scalars(self) -> tuple:
        """``tau, slope, rscale`` as the kernel's T."""
        T, spec = self.T, self.spec
        rscale = 1.0 / math.sqrt(self.D) if self.score == "scaled_dot" else 1.0
        return T(spec.tau), T(spec.negative_slope), T(rscale)

    def dims(self) -> tuple:
        return np.int32(self.H), np.int32(self.D), np.int32(self.Dv), np.int32(self.geom.lpe)

    def dropout(self) -> tuple:
        spec = self.spec
        return (np.uint64(spec.seed_key), np.uint64(spec.threshold), np.int64(spec.edge_offset),
                self.T(spec.keep_scale))

    def empty(self, *shape: int) -> Any:
        return self.xp.empty(shape, dtype=self.dtype)

    def launch_warps(self, kind: str, n_items: int, n_tiles: int, args: tuple) -> None:
        if n_items * self.H == 0:
            return
        grid, block = warp_launch(n_items, self.H, n_tiles)
        self.rt.launch(self.name(kind), grid, block, args)

    def launch_elementwise(self, kind: str, n: int, args: tuple) -> None:
        if n == 0:
            return
        grid, block = elementwise_launch(n)
        self.rt.launch(self.name(kind), grid, block, args)

    def sum_partials(self, plan: SegmentPlan, width: int, part: Any, dst: Any) -> None:
        """Add the per-slot partials of the long rows of ``plan`` into ``dst``."""
        self.launch_elementwise("sg_sum_partials", plan.n_long * self.H * width,
                                (plan.long_row, plan.long_ptr, np.int64(plan.n_long), np.int32(self.H),
                                 np.int32(width), part, dst))

    def column_sum(self, x: Any) -> Any:
        return column_sum(self.rt, x)

    def unit_rows(self, x: Any) -> tuple[Any, Any]:
        """Cosine: ``(x / nc, nc)`` with ``nc = max(|x|, eps)`` per (node, head) row."""
        n = int(x.shape[0])
        xhat, nc = self.xp.empty_like(x), self.empty(n, self.H)
        if n:
            grid, block = warp_launch(n, self.H, 1)
            self.rt.launch(self.name("sg_unit_rows"), grid, block,
                           (x, np.int64(n * self.H), np.int32(self.D), self.T(COSINE_EPS), xhat, nc))
        return xhat, nc

    def unit_rows_backward(self, xhat: Any, nc: Any, grad: Any) -> None:
        """Cosine: turn ``grad`` (w.r.t. the unit rows) into the gradient w.r.t. x, in place."""
        n = int(xhat.shape[0])
        if n:
            grid, block = warp_launch(n, self.H, 1)
            self.rt.launch(self.name("sg_unit_rows_bwd"), grid, block,
                           (xhat, nc, np.int64(n * self.H), np.int32(self.D), self.T(COSINE_EPS), grad))


def column_sum(rt: Runtime, x: Any) -> Any:
    """Deterministic sum over axis 0 of the 2-D array ``x`` (R, C) -> (C,), by ``sg_column_sum``.

    Each pass sums chunks of rows in a fixed order (``colsum_rows_per_block``); passes
    repeat on the chunk sums until one row is left. The order of every addition depends
    only on ``(R, C)``, never on timing.
    """
    R, C = int(x.shape[0]), int(x.shape[1])
    dtype = np.dtype(x.dtype)
    name = helper_kernel_name("sg_column_sum", dtype)
    while True:
        rpb = colsum_rows_per_block(R)
        chunks = max(1, _cdiv(R, rpb))
        out = rt.xp.empty((chunks, C), dtype=dtype)
        if C:
            rt.launch(name, (_cdiv(C, 32), chunks, 1), (32, 8, 1),
                      (x, np.int64(R), np.int64(C), np.int64(rpb), out))
        if chunks == 1:
            return out[0]
        x, R = out, chunks


# ---------------------------------------------------------------------- the function set
def _run_forward(c: _Call, g: Any, q: Any, k: Any, v: Any, att: Any, edge_bias: Any,
                 scores: Any) -> tuple[Any, Any, Any]:
    """Launch the fused forward (and merges): ``(out, rmax, rlog)``; ``v`` None computes
    only the row statistics (and the raw scores into ``scores``)."""
    plan = _plan(g, "rows", c.xp, c.geom.segment_edges)
    n_dst = g.shape[0]
    out = None if v is None else c.empty(n_dst, c.H, c.Dv)
    rmax = c.empty(n_dst, c.H)
    rlog = c.empty(n_dst, c.H)
    part_acc = c.empty(plan.n_slots, c.H, c.Dv) if plan.n_slots and c.Dv else None
    part_ml = c.empty(plan.n_slots, c.H, 2) if plan.n_slots else None
    n_tiles = c.geom.tiles(c.Dv)
    c.launch_warps("sg_attn_fwd", plan.n_seg, n_tiles,
                   (plan.seg_ptr, plan.seg_row, plan.seg_slot, np.int64(plan.n_seg), g.indices,
                    q, k, nullable(v), nullable(att), nullable(edge_bias), *c.dims(), *c.scalars(),
                    *c.dropout(), nullable(out), rmax, rlog, nullable(part_acc), nullable(part_ml),
                    nullable(scores)))
    if plan.n_long:
        c.launch_elementwise("sg_attn_fwd_merge", plan.n_long * c.H * max(c.Dv, 1),
                             (plan.long_row, plan.long_ptr, np.int64(plan.n_long), np.int32(c.H),
                              np.int32(c.Dv), nullable(part_acc), part_ml, c.T(c.spec.keep_scale),
                              nullable(out), rmax, rlog))
    return out, rmax, rlog


def forward(g: Any, q: Any, k: Any, v: Any, att: Any, edge_bias: Any, spec: AttentionSpec,
            rt: Runtime) -> tuple[Any, dict]:
    """Fused forward: ``out (n_dst, H, Dv)`` and ``saved`` holding ``ROW_MAX`` (``rmax``) and ``ROW_LOG_DENOM`` (``rlog``), each (n_dst, H).

    ``rmax`` is each row's largest score and ``rlog`` the log of its softmax
    denominator relative to it; backward recomputes ``p = exp((s - rmax) - rlog)``.
    """
    c = _Call(g, q, k, v, att, spec, rt, (q, k, v, att))
    q, k, _ = c.score_inputs(q, k)
    out, rmax, rlog = _run_forward(c, g, q, k, v, att, edge_bias, None)
    return out, {ROW_MAX: rmax, ROW_LOG_DENOM: rlog}


def weights(g: Any, q: Any, k: Any, att: Any, edge_bias: Any, spec: AttentionSpec, rt: Runtime) -> Any:
    """Attention weights (nnz, H) in CSR order, after dropout."""
    c = _Call(g, q, k, None, att, spec, rt, (q, k, att))
    q, k, _ = c.score_inputs(q, k)
    w = c.empty(g.nnz, c.H)
    _, rmax, rlog = _run_forward(c, g, q, k, None, att, edge_bias, w)
    c.launch_elementwise("sg_attn_weights_fin", g.nnz * c.H,
                         (g.row_ids(), np.int64(g.nnz), np.int32(c.H), rmax, rlog, *c.dropout(), w))
    return w


def backward(g: Any, q: Any, k: Any, v: Any, att: Any, edge_bias: Any, spec: AttentionSpec,
             out: Any, saved: dict, dout: Any, rt: Runtime) -> dict:
    """Deterministic backward: a row pass (dq, ds, a, partials), a column pass (dk, dv), reductions."""
    c = _Call(g, q, k, v, att, spec, rt, (q, k, v, att, out, dout))
    xp, H, D, Dv = c.xp, c.H, c.D, c.Dv
    n_dst, n_src = g.shape
    nnz = g.nnz
    rows = _plan(g, "rows", xp, c.geom.segment_edges)
    cols = _plan(g, "cols", xp, c.geom.segment_edges)
    _, t_indices, t_perm = g.transposed()
    gatv2 = c.score == "gatv2"
    has_tau = c.score in ("cosine", "euclidean")
    q, k, unit = c.score_inputs(q, k)  # cosine: unit rows, gradients taken through them below

    ds = c.empty(nnz, H)
    a = c.empty(nnz, H)
    dq = xp.empty_like(q)
    dq_part = c.empty(rows.n_slots, H, D) if rows.n_slots else None
    att_part = c.empty(rows.n_seg, H, D) if gatv2 else None
    tau_part = c.empty(rows.n_seg, H) if has_tau else None
    c.launch_warps("sg_attn_bwd_rows", rows.n_seg, c.geom.tiles(D),
                   (rows.seg_ptr, rows.seg_row, rows.seg_slot, np.int64(rows.n_seg), g.indices,
                    q, k, v, nullable(att), nullable(edge_bias), out, dout, saved[ROW_MAX],
                    saved[ROW_LOG_DENOM], *c.dims(), *c.scalars(), *c.dropout(), ds, a, dq,
                    nullable(dq_part), nullable(att_part), nullable(tau_part)))
    if rows.n_long:
        c.sum_partials(rows, D, dq_part, dq)
    if unit:
        c.unit_rows_backward(unit[0], unit[1], dq)

    dk = xp.empty_like(k)
    dv = xp.empty_like(v)
    dk_part = c.empty(cols.n_slots, H, D) if cols.n_slots else None
    dv_part = c.empty(cols.n_slots, H, Dv) if cols.n_slots else None
    c.launch_warps("sg_attn_bwd_cols", cols.n_seg, c.geom.tiles(max(D, Dv)),
                   (cols.seg_ptr, cols.seg_row, cols.seg_slot, np.int64(cols.n_seg), t_indices, t_perm,
                    q, k, nullable(att), dout, ds, a, *c.dims(), *c.scalars(),
                    dk, dv, nullable(dk_part), nullable(dv_part)))
    if cols.n_long:
        c.sum_partials(cols, D, dk_part, dk)
        c.sum_partials(cols, Dv, dv_part, dv)
    if unit:
        c.unit_rows_backward(unit[2], unit[3], dk)

    grads = {"q": dq, "k": dk, "v": dv}
    if gatv2:
        grads["att"] = c.column_sum(att_part.reshape(rows.n_seg, H * D)).reshape(H, D)
    if has_tau:
        grads["tau"] = c.column_sum(tau_part.reshape(rows.n_seg * H, 1)).reshape(())
    if edge_bias is not None:
        grads["edge_bias"] = ds
    return grads
