// sparsegat CUDA kernels: the fused forward pass and the attention weights.
//
//   sg_attn_fwd           a warp per (row segment, head): scores, online softmax and
//                         aggregation in one sweep over the segment's edges.
//   sg_attn_fwd_merge     rows split into several segments: merge the per-segment
//                         (max, sum, normalised accumulator) partials in segment order.
//   sg_attn_weights_fin   turn raw scores into weights once the row statistics are known.
//   sg_unit_rows          cosine: rows x / max(|x|, eps) and their clamped norms.
//
// See common.cuh for layouts and the warp/group decomposition, docs/cuda.md for the
// design.

#include "common.cuh"

// Template arguments: T float/double; I int/long long (index type); SCORE (sg::DOT...);
// VEC elements per vector load (1, or 16 / sizeof(T) when D and Dv allow it);
// NACC vectors of accumulators per lane (the Dv tile is lpe * VEC * NACC wide).
//
// Online softmax state of a group: the running max m, l = sum exp(s - m) and the
// accumulator acc = sum keep * exp(s - m) * v_j / l, kept normalised (a weighted mean
// of the values, so |acc| <= max |v_j|: values near the dtype's maximum never
// overflow an un-normalised sum). Each edge costs one scalar factor per group and one
// multiply and one FMA per feature: acc = acc * (l_old * sc / l_new) + (pk / l_new) * v.
//
// Outputs for a row held by a single segment (seg_slot < 0): out = keep_scale * acc, and
// the row's softmax statistics rmax (the max score) and rlog (log of sum exp(s - rmax)),
// kept apart so that p = exp((s - rmax) - rlog) stays accurate when |rmax| is huge.
// They are saved as computed for every non-empty row: a row with a NaN score saves NaN;
// a row whose scores are all -inf (l = 0) saves what the reference saves there,
// rmax = -inf and rlog = NaN (its -inf - -inf); the public boundary refuses either.
// Only an empty row saves 0 and 0.
// For a row split over several segments: part_acc (slot, H, Dv), the segment's
// normalised acc, and part_ml (slot, H, 2) = (m, l) for sg_attn_fwd_merge.
// For cosine, q and k are the unit rows made by sg_unit_rows.
// v may be null with Dv = 0 (the weights path); scores, when not null, receives the
// raw score of every edge (nnz, H).
template <typename T, typename I, int SCORE, int VEC, int NACC>
__global__ void __launch_bounds__(128)
sg_attn_fwd(const I* __restrict__ seg_ptr, const I* __restrict__ seg_row,
            const I* __restrict__ seg_slot, long long n_seg, const I* __restrict__ indices,
            const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
            const T* __restrict__ att, const T* __restrict__ bias,
            int H, int D, int Dv, int lpe,
            T tau, T slope, T rscale,
            unsigned long long seed_key, unsigned long long threshold, long long edge_offset,
                 T keep_scale,
            T* __restrict__ out, T* __restrict__ rmax, T* __restrict__ rlog,
            T* __restrict__ part_acc, T* __restrict__ part_ml, T* __restrict__ scores) {
  using namespace sg;
  WarpItem item;
  if (!warp_item(n_seg, H, item)) return;
  const LaneGeometry lg = lane_geometry<VEC, NACC>(item, lpe);
  const int h = lg.h;
  const int lane = lg.lane;
  const int G = lg.G;
  const int g = lg.g;
  const int lig = lg.lig;
  const int stride = lg.stride;
  const int f0 = lg.f0;
  const bool first_tile = lg.first_tile;

  const long long row = (long long)seg_row[item.seg];
  const long long slot = (long long)seg_slot[item.seg];
  const long long beg = (long long)seg_ptr[item.seg];
  const long long end = (long long)seg_ptr[item.seg + 1];
  const long long rh = row * H + h;

  const T* qr = q + rh * (SCORE == ADDITIVE ? 1 : D);
  const T* ar = SCORE == GATV2 ? att + (long long)h * D : nullptr;
  const T qa = SCORE == ADDITIVE ? qr[0] : T(0);

  T m = Num<T>::lowest();
  T l = T(0);
  T acc[NACC][VEC];
#pragma unroll
  for (int it = 0; it < NACC; ++it) zero_pack(acc[it]);

  // One edge's online-softmax update (edge e, score s before the bias, values vj).
  auto update = [&](long long e, T s, const T (&vj)[NACC][VEC]) {
    if (bias != nullptr) s += bias[e * H + h];
    if (scores != nullptr && first_tile && lig == 0) scores[e * H + h] = s;
    const bool kp = keep_edge(seed_key, threshold, edge_offset + e, H, h);
    const T mn = sg_max(m, s);
    const T sc = sg_exp(m - mn);
    const T p = sg_exp(s - mn);
    const T ls = l * sc;
    const T ln = ls + p;
    // l_new is 0 only while every score so far is -inf (acc is 0 then); NaN propagates.
    const T inv = ln != T(0) ? T(1) / ln : T(0);
    const T fa = ls * inv;                   // l_old * sc / l_new
    const T fb = kp ? p * inv : T(0);        // keep * p / l_new
    l = ln;
    m = mn;
#pragma unroll
    for (int it = 0; it < NACC; ++it) {
#pragma unroll
      for (int u = 0; u < VEC; ++u) acc[it][u] = acc[it][u] * fa + fb * vj[it][u];
    }
  };
  // This lane's value vectors of the edge to source row jh (zeros outside the tile).
  auto load_values = [&](bool valid, long long jh, T (&vj)[NACC][VEC]) {
#pragma unroll
    for (int it = 0; it < NACC; ++it) {
      const int d = f0 + it * stride + lig * VEC;
      if (valid && d < Dv) load_pack(v + jh * Dv + d, vj[it]);
      else zero_pack(vj[it]);
    }
  };

  for (long long base = beg; base < end; base += 32) {
    const int cnt = (int)sg_min_ll(32, end - base);
    // Column indices of up to 32 edges at once; broadcast to the groups by shuffles.
    const I my_col = lane < cnt ? indices[base + lane] : I(0);
    for (int t = 0; t < cnt; t += G) {
      const int idx = t + g;
      const bool valid = idx < cnt;
      const long long j = (long long)__shfl_sync(SG_FULL_MASK, my_col, idx);
      const long long jh = j * H + h;
      // Issue the value loads first: they do not depend on the score.
      T vj[NACC][VEC];
      load_values(valid, jh, vj);
      T s;
      if (SCORE == ADDITIVE) {
        s = lrelu(qa + k[jh], slope);
      } else {
        const T t0 = group_sum(score_partial<T, SCORE, VEC>(qr, k + jh * D, ar, D, lig, lpe, slope), lpe);
        s = score_value<T, SCORE>(t0, tau, rscale);
      }
      if (valid) update(base + idx, s, vj);
    }
  }

  // Merge the groups' online-softmax states: xor offsets lpe, 2 lpe, ..., 16. The
  // accumulators are normalised, so they are weighted by each side's share of the sum.
  // A group without edges has l = 0 (its share is 0); a NaN l or m is not dropped.
  for (int o = lpe; o < 32; o <<= 1) {
    const T m2 = __shfl_xor_sync(SG_FULL_MASK, m, o);
    const T l2 = __shfl_xor_sync(SG_FULL_MASK, l, o);
    const T mn = sg_max(m, m2);
    const T la = l * sg_exp(m - mn);
    const T lb = l2 * sg_exp(m2 - mn);
    const T ln = la + lb;
    const T inv = ln != T(0) ? T(1) / ln : T(0);
    const T wa = la * inv;
    const T wb = lb * inv;
    l = ln;
    m = mn;
#pragma unroll
    for (int it = 0; it < NACC; ++it) {
      if (f0 + it * stride < Dv) {  // warp-uniform
#pragma unroll
        for (int u = 0; u < VEC; ++u) {
          const T a2 = __shfl_xor_sync(SG_FULL_MASK, acc[it][u], o);
          acc[it][u] = acc[it][u] * wa + a2 * wb;
        }
      }
    }
  }

  if (g != 0) return;
  if (slot < 0) {
#pragma unroll
    for (int it = 0; it < NACC; ++it) {
      const int d = f0 + it * stride + lig * VEC;
      if (d < Dv) {
        T o[VEC];
#pragma unroll
        for (int u = 0; u < VEC; ++u) o[u] = acc[it][u] * keep_scale;
        store_pack(out + rh * Dv + d, o);
      }
    }
    if (first_tile && lig == 0) {
      // Every non-empty row saves its statistics as they are; an empty row saves 0, 0.
      // Every score -inf: m is still the finite start value and l = 0, so save the
      // reference's max -inf (log 0) and its log-denominator NaN (-inf - -inf).
      const bool any = end > beg;
      const T lg = sg_log(l);
      const bool none = l == T(0);
      rmax[rh] = any ? (none ? lg : m) : T(0);
      rlog[rh] = any ? (none ? lg - lg : lg) : T(0);
    }
  } else {
    const long long sh = slot * H + h;
#pragma unroll
    for (int it = 0; it < NACC; ++it) {
      const int d = f0 + it * stride + lig * VEC;
      if (d < Dv) store_pack(part_acc + sh * Dv + d, acc[it]);
    }
    if (first_tile && lig == 0) {
      part_ml[2 * sh] = m;
      part_ml[2 * sh + 1] = l;
    }
  }
}

// Rows split over several segments, merged in segment order: M = max_s m_s,
// L = sum_s l_s e^(m_s - M), out = keep_scale * sum_s acc_s * (l_s e^(m_s - M) / L)
// (acc_s are the segments' normalised means, so this is a convex combination: it
// overflows only when the result does), rmax = M, rlog = log L. The weights and the
// sums are taken in double, so that the rounding error of a float row of many
// segments does not grow with its degree. A segment whose l or m is NaN makes the row
// NaN (never dropped); L = 0 (every score -inf) saves out = 0 and, as the single-segment
// path and the reference, rmax = -inf and rlog = NaN.
// A thread per (long row, head, feature); F = max(Dv, 1) so the statistics are
// written with Dv = 0 too.
template <typename T, typename I>
__global__ void __launch_bounds__(256)
sg_attn_fwd_merge(const I* __restrict__ long_row, const I* __restrict__ long_ptr, long long n_long,
                  int H, int Dv, const T* __restrict__ part_acc, const T* __restrict__ part_ml,
                  T keep_scale, T* __restrict__ out, T* __restrict__ rmax, T* __restrict__ rlog) {
  using namespace sg;
  const int F = Dv > 0 ? Dv : 1;
  if (H <= 0) return;
  ItemWalk w;
  for (w.begin(H, F); w.item < n_long; w.next()) {
    const int d = (int)w.d;
    const int h = (int)w.h;
    const long long r = w.item;
    const long long s0 = (long long)long_ptr[r], s1 = (long long)long_ptr[r + 1];
    T M = Num<T>::lowest();
    for (long long s = s0; s < s1; ++s) M = sg_max(M, part_ml[2 * (s * H + h)]);
    double L = 0.0;
    for (long long s = s0; s < s1; ++s) {
      const long long sh = s * H + h;
      L += (double)part_ml[2 * sh + 1] * sg_exp((double)part_ml[2 * sh] - (double)M);
    }
    const long long rh = (long long)long_row[r] * H + h;
    if (d < Dv) {
      const double inv = L != 0.0 ? 1.0 / L : 0.0;
      double o = 0.0;
      for (long long s = s0; s < s1; ++s) {
        const long long sh = s * H + h;
        const double w = (double)part_ml[2 * sh + 1] * sg_exp((double)part_ml[2 * sh] - (double)M) * inv;
        o += (double)part_acc[sh * Dv + d] * w;
      }
      out[rh * Dv + d] = (T)(o * (double)keep_scale);
    }
    if (d == 0) {
      const T lg = (T)sg_log(L);
      const bool none = L == 0.0;
      rmax[rh] = none ? lg : M;
      rlog[rh] = none ? lg - lg : lg;
    }
  }
}

// w (nnz, H) holds raw scores; replace them by exp((s - rmax) - rlog) * keep * keep_scale.
template <typename T, typename I>
__global__ void __launch_bounds__(256)
sg_attn_weights_fin(const I* __restrict__ row_ids, long long nnz, int H, const T* __restrict__ rmax,
                    const T* __restrict__ rlog,
                    unsigned long long seed_key, unsigned long long threshold, long long edge_offset,
                 T keep_scale,
                    T* __restrict__ w) {
  using namespace sg;
  if (H <= 0) return;
  ItemWalk wk;
  for (wk.begin(H, 1); wk.item < nnz; wk.next()) {
    const long long e = wk.item;
    const int h = (int)wk.h;
    const long long idx = e * H + h;
    const long long row = (long long)row_ids[e];
    const long long rh = row * H + h;
    const T p = sg_exp((w[idx] - rmax[rh]) - rlog[rh]);
    w[idx] = keep_edge(seed_key, threshold, edge_offset + e, H, h) ? p * keep_scale : T(0);
  }
}

// Cosine scores use unit rows: xhat = x / nc with nc = max(|x|, eps), as the
// reference. The norm is computed as big * sqrt(sum (x / big)^2), big = max |x_d|, so
// squaring never overflows or underflows. A warp per row of D elements (n_rows rows);
// norm_out receives nc.
template <typename T>
__global__ void __launch_bounds__(128)
sg_unit_rows(const T* __restrict__ x, long long n_rows, int D, T eps, T* __restrict__ xhat,
             T* __restrict__ norm_out) {
  using namespace sg;
  const long long w = (long long)blockIdx.x * (long long)(blockDim.x >> 5) + (long long)(threadIdx.x >> 5);
  if (w >= n_rows) return;
  const int lane = threadIdx.x & 31;
  const T* xr = x + w * D;
  T big = T(0);
  for (int d = lane; d < D; d += 32) big = sg_max(big, xr[d] < T(0) ? -xr[d] : xr[d]);
  big = warp_max(big);
  T norm = T(0);
  if (big > T(0)) {
    T t = T(0);
    for (int d = lane; d < D; d += 32) {
      const T y = xr[d] / big;
      t += y * y;
    }
    norm = big * sg_sqrt(warp_sum(t));
  }
  const T nc = sg_max(norm, eps);
  for (int d = lane; d < D; d += 32) xhat[w * D + d] = xr[d] / nc;
  if (lane == 0) norm_out[w] = nc;
}
