// sparsegat CUDA kernels: shared helpers.
//
// Everything here compiles three ways, so it uses no header at all:
//   * NVRTC through cupy.RawModule (the backend; no standard library there),
//   * nvcc (the compile tests, sm_80 and sm_90),
//   * the host C++ compiler against tests/cuda_emulation/cuda_emu.h (the emulated tests).
// Only plain arithmetic, expf/exp, logf/log, sqrtf/sqrt, warp shuffles and
// __syncthreads are used. There are no atomics anywhere in the kernels: every sum
// is taken in a fixed order, so results are bitwise reproducible.
//
// Layouts (all C-contiguous, row-major):
//   q (n_dst, H, D)   k (n_src, H, D)   [additive: q (n_dst, H), k (n_src, H), D = 1]
//   v (n_src, H, Dv)  out, dout (n_dst, H, Dv)  att (H, D)  edge_bias (nnz, H)
//   rmax, rlog (n_dst, H): each row's max score and log sum exp(s - rmax)
//   per-edge arrays (nnz, H) in CSR order.
//
// Work decomposition (see docs/cuda.md): a warp per (segment, head), where a
// segment is at most `chunk` consecutive edges of one row (or of one column of the
// transposed structure). Inside the warp, lanes form G = 32 / lpe groups of lpe
// lanes ("lanes per edge"); each group handles one edge at a time and its lanes
// split the feature axis in vectors of VEC elements. Accumulators for a tile of
// lpe * VEC * NACC features live in registers; blockIdx.y picks the tile.

#ifndef SPARSEGAT_CUDA_COMMON_CUH
#define SPARSEGAT_CUDA_COMMON_CUH

#define SG_FULL_MASK 0xffffffffu

namespace sg {

// Score codes: the template argument SCORE of the attention kernels.
enum : int { DOT = 0, SCALED_DOT = 1, COSINE = 2, EUCLIDEAN = 3, ADDITIVE = 4, GATV2 = 5 };

template <typename T> struct Num;
template <> struct Num<float> {
  static __device__ __forceinline__ float lowest() { return -3.402823466e+38f; }
};
template <> struct Num<double> {
  static __device__ __forceinline__ double lowest() { return -1.7976931348623157e+308; }
};

__device__ __forceinline__ float sg_exp(float x) { return expf(x); }
__device__ __forceinline__ double sg_exp(double x) { return exp(x); }
__device__ __forceinline__ float sg_log(float x) { return logf(x); }
__device__ __forceinline__ double sg_log(double x) { return log(x); }
__device__ __forceinline__ float sg_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double sg_sqrt(double x) { return sqrt(x); }

// max that propagates NaN from either side. `a > b ? a : b` drops a NaN in a but keeps
// one in b, so the two lanes of a butterfly step (max(x, y) on one, max(y, x) on the
// other) could end with different values and branch apart around a full-mask shuffle
// (sg_unit_rows). Here both get NaN, and every lane of a reduction the same value.
template <typename T> __device__ __forceinline__ T sg_max(T a, T b) { return (a > b || a != a) ? a : b; }
__device__ __forceinline__ long long sg_min_ll(long long a, long long b) { return a < b ? a : b; }

// LeakyReLU and its derivative; at z == 0 the slope branch (docs/math.md).
template <typename T> __device__ __forceinline__ T lrelu(T z, T slope) { return z > T(0) ? z : z * slope; }
template <typename T> __device__ __forceinline__ T lrelu_grad(T z, T slope) { return z > T(0) ? T(1) : slope; }

// ------------------------------------------------------------------ vector loads
// A pack of N elements aligned to its size: one 16-byte (or 8-byte) transaction.
template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

template <typename T, int N>
__device__ __forceinline__ void load_pack(const T* __restrict__ p, T (&r)[N]) {
  const Pack<T, N> t = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int u = 0; u < N; ++u) r[u] = t.v[u];
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* __restrict__ p, const T (&r)[N]) {
  Pack<T, N> t;
#pragma unroll
  for (int u = 0; u < N; ++u) t.v[u] = r[u];
  *reinterpret_cast<Pack<T, N>*>(p) = t;
}

template <typename T, int N>
__device__ __forceinline__ void zero_pack(T (&r)[N]) {
#pragma unroll
  for (int u = 0; u < N; ++u) r[u] = T(0);
}

// ------------------------------------------------------------------ warp reductions
// Butterfly sum over the lpe lanes of a group (lpe a power of two <= 32). Every
// lane of the group ends with the same bits (a + b == b + a), so the result is
// replicated, and the order of the additions is fixed by the lane layout.
template <typename T>
__device__ __forceinline__ T group_sum(T x, int lpe) {
  for (int o = lpe >> 1; o > 0; o >>= 1) x += __shfl_xor_sync(SG_FULL_MASK, x, o);
  return x;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(SG_FULL_MASK, x, o);
  return x;
}

// Sum across the G groups of a warp (xor offsets lpe, 2 lpe, ..., 16).
template <typename T>
__device__ __forceinline__ T across_groups_sum(T x, int lpe) {
  for (int o = lpe; o < 32; o <<= 1) x += __shfl_xor_sync(SG_FULL_MASK, x, o);
  return x;
}

// ------------------------------------------------------------------ dropout
// splitmix64 finaliser and the keep rule of sparsegat/dropout.py, bit for bit.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// keep = (splitmix64(seed_key ^ (e * H + h)) >> 11) >= threshold; threshold 0 keeps all. Callers pass
// e = edge_offset + CSR position (edge_offset > 0 for a row block of a larger graph).
__device__ __forceinline__ bool keep_edge(unsigned long long seed_key, unsigned long long threshold,
                                          long long e, int H, int h) {
  if (threshold == 0ull) return true;
  const unsigned long long counter =
      (unsigned long long)e * (unsigned long long)H + (unsigned long long)h;
  return (splitmix64(seed_key ^ counter) >> 11) >= threshold;
}

// ------------------------------------------------------------------ scores
// Per-lane partial sums of a vector score over this lane's slice of the D axis
// (d = lig * VEC, lig * VEC + lpe * VEC, ...):
//   dot, scaled_dot, cosine: t0 = sum q k   (cosine: q and k are the unit rows
//                                            q / max(|q|, eps), see sg_unit_rows)
//   euclidean:               t0 = sum (q - k)^2
//   gatv2:                   t0 = sum att * LeakyReLU(q + k)
// t0 += the score terms of one pack.
template <typename T, int SCORE, int VEC>
__device__ __forceinline__ void score_terms(T& t0, const T (&qv)[VEC], const T (&kv)[VEC], const T (&av)[VEC],
                                            T slope) {
  if (SCORE == GATV2) {
#pragma unroll
    for (int u = 0; u < VEC; ++u) t0 += av[u] * lrelu(qv[u] + kv[u], slope);
  } else if (SCORE == EUCLIDEAN) {
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
      const T diff = qv[u] - kv[u];
      t0 += diff * diff;
    }
  } else {
#pragma unroll
    for (int u = 0; u < VEC; ++u) t0 += qv[u] * kv[u];
  }
}

template <typename T, int SCORE, int VEC>
__device__ __forceinline__ T score_partial(const T* __restrict__ qr, const T* __restrict__ kr,
                                           const T* __restrict__ ar, int D, int lig, int lpe, T slope) {
  T t0 = T(0);
  for (int d = lig * VEC; d < D; d += lpe * VEC) {
    T qv[VEC], kv[VEC], av[VEC];
    load_pack(qr + d, qv);
    load_pack(kr + d, kv);
    if (SCORE == GATV2) load_pack(ar + d, av);
    score_terms<T, SCORE, VEC>(t0, qv, kv, av, slope);
  }
  return t0;
}

// The score of one edge from the reduced term t0 (before the edge bias).
template <typename T, int SCORE>
__device__ __forceinline__ T score_value(T t0, T tau, T rscale) {
  if (SCORE == SCALED_DOT) return t0 * rscale;
  if (SCORE == COSINE) return tau * t0;
  if (SCORE == EUCLIDEAN) return -tau * t0;
  return t0;  // dot, gatv2
}

template <typename T>
__device__ __forceinline__ T warp_max(T x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = sg_max(x, __shfl_xor_sync(SG_FULL_MASK, x, o));
  return x;
}

// ------------------------------------------------------------------ element-wise walks
// Grid-stride loop of an element-wise kernel over an (n_items, H, F) index space, kept
// as a mixed-radix counter (item, h, d): the thread's start and the grid's stride are
// split once with 32-bit divisions, each step is then additions and carries. A flat
// 64-bit index would cost a 64-bit division and remainder per element (slow
// subroutines). Only the item is 64-bit (it may count edges). The launch keeps
// gridDim.x * blockDim.x below 2^32 (launch.elementwise_launch: at most 65535 blocks of
// 256 threads); H, F >= 1.
struct ItemWalk {
  long long item, step_item;
  unsigned h, d, step_h, step_d, H, F;

  __device__ __forceinline__ void split(unsigned x, long long& it, unsigned& hh, unsigned& dd) const {
    const unsigned t = x / F;
    dd = x - t * F;
    const unsigned u = t / H;
    hh = t - u * H;
    it = (long long)u;
  }
  __device__ __forceinline__ void begin(int H_, int F_) {
    H = (unsigned)H_;
    F = (unsigned)F_;
    split(blockIdx.x * blockDim.x + threadIdx.x, item, h, d);
    split(gridDim.x * blockDim.x, step_item, step_h, step_d);
  }
  // d + step_d < 2F and h + step_h + carry < 2H: one conditional subtraction each.
  __device__ __forceinline__ void next() {
    d += step_d;
    const unsigned cd = d >= F ? 1u : 0u;
    if (cd) d -= F;
    h += step_h + cd;
    const unsigned ch = h >= H ? 1u : 0u;
    if (ch) h -= H;
    item += step_item + (long long)ch;
  }
};

// The warp's (segment, head) item; whole warps leave together when out of range.
struct WarpItem {
  long long seg;
  int h;
};

// Warp w = blockIdx.x * wpb + wi is item (w / H, w % H); w may pass 2^32, so it is
// split as blockIdx.x = bq * H + br: w / H = bq * wpb + (br * wpb + wi) / H, with two
// 32-bit divisions instead of a 64-bit one.
__device__ __forceinline__ bool warp_item(long long n_seg, int H, WarpItem& it) {
  const unsigned wpb = blockDim.x >> 5, uH = (unsigned)H;
  const unsigned bq = blockIdx.x / uH, br = blockIdx.x - bq * uH;
  const unsigned t = br * wpb + (threadIdx.x >> 5);  // < H * wpb
  const unsigned tq = t / uH;
  it.seg = (long long)bq * wpb + tq;
  it.h = (int)(t - tq * uH);
  return it.seg < n_seg;
}

// A lane's place in the warp-per-segment decomposition: head h, lane, G = 32 / lpe
// groups, group g, lane in group lig, feature stride lpe * VEC between a lane's
// vectors, first feature f0 of this block's tile (blockIdx.y) and whether it is the
// first tile.
struct LaneGeometry {
  int h, lane, G, g, lig, stride, f0;
  bool first_tile;
};

template <int VEC, int NACC>
__device__ __forceinline__ LaneGeometry lane_geometry(const WarpItem& item, int lpe) {
  LaneGeometry lg;
  lg.h = item.h;
  lg.lane = threadIdx.x & 31;
  lg.G = 32 / lpe;
  lg.g = lg.lane / lpe;
  lg.lig = lg.lane - lg.g * lpe;
  lg.stride = lpe * VEC;
  lg.f0 = (int)blockIdx.y * lg.stride * NACC;
  lg.first_tile = blockIdx.y == 0;
  return lg;
}

}  // namespace sg

#endif  // SPARSEGAT_CUDA_COMMON_CUH
