"""Low-level helpers: software prefetch of gathered rows.

The kernels gather whole rows of ``v``, ``dout``, ``q``, ``k`` at random node
ids (``v[indices[e]]``); an out-of-order core overlaps only a few of those
misses. Issuing ``llvm.prefetch`` for the row a few edges ahead keeps more
misses in flight (measured ~25-35% off the forward pass on the benchmark graph).
Prefetches are hints: they never fault and never change results.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: How many edges ahead the kernels prefetch.
PREFETCH_DISTANCE = 8
CACHE_LINE = 64


def _make_prefetch(rw: int):
    def prefetch(typingctx, arr, flat_index):
        if not isinstance(arr, types.Array) or not isinstance(flat_index, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            aryty, idxty = signature.args
            ary = context.make_array(aryty)(context, builder, args[0])
            i = context.cast(builder, args[1], idxty, types.intp)
            ptr = builder.gep(ary.data, [i])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            # (address, rw, locality 3 = keep in all cache levels, cache type 1 = data)
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(rw), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(arr, flat_index), codegen

    prefetch.__name__ = prefetch.__qualname__ = "prefetch_write" if rw else "prefetch_read"
    prefetch.__doc__ = (f"Prefetch the cache line of ``arr.flat[flat_index]`` for "
                        f"{'writing' if rw else 'reading'} (``arr`` C-contiguous).")
    return intrinsic(prefetch)


prefetch_read = _make_prefetch(0)
prefetch_write = _make_prefetch(1)


@njit(inline="always", cache=True)
def prefetch_row(a, row):
    """Prefetch every cache line of ``a[row]`` for reading (``a`` C-contiguous, ``row`` valid)."""
    n = a.strides[0] // a.itemsize
    step = CACHE_LINE // a.itemsize
    base = row * n
    for off in range(0, n, step):
        prefetch_read(a, base + off)


@njit(inline="always", cache=True)
def prefetch_row_for_write(a, row):
    """Prefetch every cache line of ``a[row]`` for writing."""
    n = a.strides[0] // a.itemsize
    step = CACHE_LINE // a.itemsize
    base = row * n
    for off in range(0, n, step):
        prefetch_write(a, base + off)


@intrinsic
def bitcast_int_to_float(typingctx, x):
    """Reinterpret the bits of an int32 as float32, or of an int64 as float64."""
    if x == types.int32:
        target = types.float32
    elif x == types.int64:
        target = types.float64
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(target))

    return target(x), codegen
