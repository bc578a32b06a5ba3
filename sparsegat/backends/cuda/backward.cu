// sparsegat CUDA kernels: the deterministic backward pass.
//
//   sg_attn_bwd_rows   a warp per (row segment, head): recompute each edge's score
//                      and p = exp((s - rmax) - rlog), form ds = p (keep*scale*(dout.v) - Delta),
//                      write ds and a = p*keep*scale per edge, accumulate dq (and the
//                      per-segment partials of datt and dtau) in registers.
//   sg_attn_bwd_cols   a warp per (column segment, head) of the transposed structure:
//                      dv_j = sum_i a_ij dout_i and dk_j = sum_i ds_ij ds/dk_j, reading
//                      the per-edge ds and a through t_perm. Each warp owns its outputs.
//   sg_sum_partials    rows/columns split over several segments: add the per-segment
//                      partial vectors in segment order.
//   sg_unit_rows_bwd   cosine: take dq, dk through the row normalisation.
//   sg_column_sum      deterministic column sums of a (R, C) matrix (att and tau
//                      gradients from per-segment partials).
//
// No atomics: every output element is written by exactly one thread, and every sum is
// taken in an order fixed by the graph and the launch geometry, so gradients are
// bitwise identical from run to run.

#include "common.cuh"

// Per edge (i <- j), head h, with Delta_i = dout_i . out_i:
//   p = exp((s - rmax_i) - rlog_i), ds = p * (keep * keep_scale * (dout_i . v_j) - Delta_i)
// Writes ds_out[e, h] = ds and a_out[e, h] = p * keep * keep_scale, needed by the
// column pass. dq goes to dq (single-segment rows) or dq_part (slot, H, D);
// for cosine (q, k the unit rows) that is G = sum_j ds tau khat_j, which
// sg_unit_rows_bwd then takes through the normalisation;
// att_part (n_seg, H, D) and tau_part (n_seg, H) hold per-segment partials.
// blockIdx.y picks the tile of the D axis this warp accumulates.
template <typename T, typename I, int SCORE, int VEC, int NACC>
__global__ void __launch_bounds__(128)
sg_attn_bwd_rows(const I* __restrict__ seg_ptr, const I* __restrict__ seg_row,
                 const I* __restrict__ seg_slot, long long n_seg, const I* __restrict__ indices,
                 const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                 const T* __restrict__ att, const T* __restrict__ bias,
                 const T* __restrict__ out, const T* __restrict__ dout, const T* __restrict__ rmax,
                 const T* __restrict__ rlog,
                 int H, int D, int Dv, int lpe,
                 T tau, T slope, T rscale,
                 unsigned long long seed_key, unsigned long long threshold, long long edge_offset,
                 T keep_scale,
                 T* __restrict__ ds_out, T* __restrict__ a_out,
                 T* __restrict__ dq, T* __restrict__ dq_part,
                 T* __restrict__ att_part, T* __restrict__ tau_part) {
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
  const int DQ = SCORE == ADDITIVE ? 1 : D;

  const T* qr = q + rh * DQ;
  const T* ar = SCORE == GATV2 ? att + (long long)h * D : nullptr;
  const T* dr = dout + rh * Dv;

  // Delta = dout_i . out_i.
  T delta = T(0);
  {
    const T* orow = out + rh * Dv;
    T t = T(0);
    for (int d = lane; d < Dv; d += 32) t += dr[d] * orow[d];
    delta = warp_sum(t);
  }
  const T qa = SCORE == ADDITIVE ? qr[0] : T(0);
  const T m_i = beg < end ? rmax[rh] : T(0);
  const T ld_i = beg < end ? rlog[rh] : T(0);

  T acc[NACC][VEC];   // dq tile
  T gacc[NACC][VEC];  // datt tile (gatv2)
#pragma unroll
  for (int it = 0; it < NACC; ++it) {
    zero_pack(acc[it]);
    zero_pack(gacc[it]);
  }
  T dqs = T(0);   // additive: the scalar dq
  T tacc = T(0);  // tau partial

  for (long long base = beg; base < end; base += 32) {
    const int cnt = (int)sg_min_ll(32, end - base);
    const I my_col = lane < cnt ? indices[base + lane] : I(0);
    for (int t = 0; t < cnt; t += G) {
      const int idx = t + g;
      const bool valid = idx < cnt;
      const long long j = (long long)__shfl_sync(SG_FULL_MASK, my_col, idx);
      const long long e = base + idx;
      const long long jh = j * H + h;
      const T* kr = k + jh * DQ;

      // dout_i . v_j over this group's lanes.
      T pv = T(0);
      for (int d = lig * VEC; d < Dv; d += stride) {
        T dv_[VEC], vv[VEC];
        load_pack(dr + d, dv_);
        load_pack(v + jh * Dv + d, vv);
#pragma unroll
        for (int u = 0; u < VEC; ++u) pv += dv_[u] * vv[u];
      }
      pv = group_sum(pv, lpe);

      T s, t0 = T(0);
      if (SCORE == ADDITIVE) {
        s = lrelu(qa + kr[0], slope);
      } else {
        t0 = group_sum(score_partial<T, SCORE, VEC>(qr, kr, ar, D, lig, lpe, slope), lpe);
        s = score_value<T, SCORE>(t0, tau, rscale);
      }
      if (!valid) continue;  // no shuffles below
      if (bias != nullptr) s += bias[e * H + h];
      const T p = sg_exp((s - m_i) - ld_i);
      const bool kp = keep_edge(seed_key, threshold, edge_offset + e, H, h);
      const T ds = p * ((kp ? keep_scale * pv : T(0)) - delta);
      if (first_tile && lig == 0) {
        const long long eh = e * H + h;
        ds_out[eh] = ds;
        a_out[eh] = kp ? p * keep_scale : T(0);
      }
      if (SCORE == COSINE) tacc += ds * t0;  // t0 = qhat . khat, the cosine
      if (SCORE == EUCLIDEAN) tacc -= ds * t0;
      if (SCORE == ADDITIVE) {
        dqs += ds * lrelu_grad(qa + kr[0], slope);
        continue;
      }
      // ds * ds/dq over this lane's features of the tile.
      const T wk = SCORE == SCALED_DOT ? ds * rscale
                   : SCORE == COSINE   ? ds * tau
                   : SCORE == EUCLIDEAN ? T(-2) * tau * ds
                                        : ds;
#pragma unroll
      for (int it = 0; it < NACC; ++it) {
        const int d = f0 + it * stride + lig * VEC;
        if (d >= D) continue;
        T kv[VEC];
        load_pack(kr + d, kv);
        if (SCORE == DOT || SCORE == SCALED_DOT || SCORE == COSINE) {
#pragma unroll
          for (int u = 0; u < VEC; ++u) acc[it][u] += wk * kv[u];
        } else if (SCORE == EUCLIDEAN) {
          T qv[VEC];
          load_pack(qr + d, qv);
#pragma unroll
          for (int u = 0; u < VEC; ++u) acc[it][u] += wk * (qv[u] - kv[u]);
        } else if (SCORE == GATV2) {
          T qv[VEC], av[VEC];
          load_pack(qr + d, qv);
          load_pack(ar + d, av);
#pragma unroll
          for (int u = 0; u < VEC; ++u) {
            const T z = qv[u] + kv[u];
            acc[it][u] += ds * av[u] * lrelu_grad(z, slope);
            gacc[it][u] += ds * lrelu(z, slope);
          }
        }
      }
    }
  }

  // Sum the groups (fixed xor order), then group 0 writes.
  dqs = across_groups_sum(dqs, lpe);
  tacc = across_groups_sum(tacc, lpe);
#pragma unroll
  for (int it = 0; it < NACC; ++it) {
    if (SCORE != ADDITIVE && f0 + it * stride < D) {  // warp-uniform
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        acc[it][u] = across_groups_sum(acc[it][u], lpe);
        if (SCORE == GATV2) gacc[it][u] = across_groups_sum(gacc[it][u], lpe);
      }
    }
  }
  if (g != 0) return;

  T* dq_dst = slot < 0 ? dq + rh * DQ : dq_part + (slot * H + h) * DQ;
  if (SCORE == ADDITIVE) {
    if (first_tile && lig == 0) dq_dst[0] = dqs;
  } else {
#pragma unroll
    for (int it = 0; it < NACC; ++it) {
      const int d = f0 + it * stride + lig * VEC;
      if (d < D) {
        store_pack(dq_dst + d, acc[it]);
        if (SCORE == GATV2) store_pack(att_part + (item.seg * H + h) * D + d, gacc[it]);
      }
    }
  }
  if (first_tile && lig == 0) {
    if (SCORE == COSINE || SCORE == EUCLIDEAN) tau_part[item.seg * H + h] = tacc;
  }
}

// Column pass over the transposed structure: column segment cseg of source node j
// spans positions [cseg_ptr[cseg], cseg_ptr[cseg + 1]) of (t_indices, t_perm).
//   dv_j = sum_i a_ij dout_i
//   dk_j = sum_i ds_ij ds/dk_j:  dot q_i; scaled_dot q_i / sqrt(D);
//          euclidean 2 tau (q_i - k_j); gatv2 att LeakyReLU'(q_i + k_j);
//          additive LeakyReLU'(q_i + k_j) (scalar);
//          cosine (unit rows) G = sum_i ds_ij tau qhat_i, through sg_unit_rows_bwd afterwards.
// blockIdx.y picks the tile of the feature axis (both D and Dv).
template <typename T, typename I, int SCORE, int VEC, int NACC>
__global__ void __launch_bounds__(128)
sg_attn_bwd_cols(const I* __restrict__ cseg_ptr, const I* __restrict__ cseg_col,
                 const I* __restrict__ cseg_slot, long long n_cseg,
                 const I* __restrict__ t_indices, const I* __restrict__ t_perm,
                 const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ att,
                 const T* __restrict__ dout, const T* __restrict__ ds_in, const T* __restrict__ a_in,
                 int H, int D, int Dv, int lpe,
                 T tau, T slope, T rscale,
                 T* __restrict__ dk, T* __restrict__ dv, T* __restrict__ dk_part,
                 T* __restrict__ dv_part) {
  using namespace sg;
  WarpItem item;
  if (!warp_item(n_cseg, H, item)) return;
  const LaneGeometry lg = lane_geometry<VEC, NACC>(item, lpe);
  const int h = lg.h;
  const int lane = lg.lane;
  const int G = lg.G;
  const int g = lg.g;
  const int lig = lg.lig;
  const int stride = lg.stride;
  const int f0 = lg.f0;
  const bool first_tile = lg.first_tile;

  const long long col = (long long)cseg_col[item.seg];
  const long long slot = (long long)cseg_slot[item.seg];
  const long long beg = (long long)cseg_ptr[item.seg];
  const long long end = (long long)cseg_ptr[item.seg + 1];
  const long long ch = col * H + h;
  const int DQ = SCORE == ADDITIVE ? 1 : D;
  const T* kr = k + ch * DQ;
  const T* ar = SCORE == GATV2 ? att + (long long)h * D : nullptr;

  const T ka = SCORE == ADDITIVE ? kr[0] : T(0);

  // This lane's slice of k_j and att (constant over the segment).
  T kreg[NACC][VEC], areg[NACC][VEC];
#pragma unroll
  for (int it = 0; it < NACC; ++it) {
    const int d = f0 + it * stride + lig * VEC;
    if (SCORE != ADDITIVE && d < D) load_pack(kr + d, kreg[it]);
    else zero_pack(kreg[it]);
    if (SCORE == GATV2 && d < D) load_pack(ar + d, areg[it]);
    else zero_pack(areg[it]);
  }

  T kacc[NACC][VEC], vacc[NACC][VEC];
#pragma unroll
  for (int it = 0; it < NACC; ++it) {
    zero_pack(kacc[it]);
    zero_pack(vacc[it]);
  }
  T dks = T(0);  // additive: the scalar dk

  for (long long base = beg; base < end; base += 32) {
    const int cnt = (int)sg_min_ll(32, end - base);
    const I my_i = lane < cnt ? t_indices[base + lane] : I(0);
    const I my_e = lane < cnt ? t_perm[base + lane] : I(0);
    for (int t = 0; t < cnt; t += G) {
      const int idx = t + g;
      const bool valid = idx < cnt;
      const long long i = (long long)__shfl_sync(SG_FULL_MASK, my_i, idx);
      const long long e = (long long)__shfl_sync(SG_FULL_MASK, my_e, idx);
      if (!valid) continue;  // no shuffles below
      const long long eh = e * H + h;
      const long long ih = i * H + h;
      const T ds = ds_in[eh];
      const T a = a_in[eh];
      if (SCORE == ADDITIVE) dks += ds * lrelu_grad(q[ih] + ka, slope);
      const T wq = SCORE == SCALED_DOT ? ds * rscale
                   : SCORE == COSINE   ? ds * tau
                   : SCORE == EUCLIDEAN ? T(2) * tau * ds
                                        : ds;
#pragma unroll
      for (int it = 0; it < NACC; ++it) {
        const int d = f0 + it * stride + lig * VEC;
        if (d < Dv) {
          T gv[VEC];
          load_pack(dout + ih * Dv + d, gv);
#pragma unroll
          for (int u = 0; u < VEC; ++u) vacc[it][u] += a * gv[u];
        }
        if (SCORE != ADDITIVE && d < D) {
          T qv[VEC];
          load_pack(q + ih * D + d, qv);
#pragma unroll
          for (int u = 0; u < VEC; ++u) {
            if (SCORE == EUCLIDEAN) kacc[it][u] += wq * (qv[u] - kreg[it][u]);
            else if (SCORE == GATV2) kacc[it][u] += ds * areg[it][u] * lrelu_grad(qv[u] + kreg[it][u], slope);
            else kacc[it][u] += wq * qv[u];
          }
        }
      }
    }
  }

  dks = across_groups_sum(dks, lpe);
#pragma unroll
  for (int it = 0; it < NACC; ++it) {
    const int fb = f0 + it * stride;  // warp-uniform
#pragma unroll
    for (int u = 0; u < VEC; ++u) {
      if (fb < Dv) vacc[it][u] = across_groups_sum(vacc[it][u], lpe);
      if (SCORE != ADDITIVE && fb < D) kacc[it][u] = across_groups_sum(kacc[it][u], lpe);
    }
  }
  if (g != 0) return;

  T* dk_dst = slot < 0 ? dk + ch * DQ : dk_part + (slot * H + h) * DQ;
  T* dv_dst = slot < 0 ? dv + ch * Dv : dv_part + (slot * H + h) * Dv;
  if (SCORE == ADDITIVE && first_tile && lig == 0) dk_dst[0] = dks;
#pragma unroll
  for (int it = 0; it < NACC; ++it) {
    const int d = f0 + it * stride + lig * VEC;
    if (d < Dv) store_pack(dv_dst + d, vacc[it]);
    if (SCORE != ADDITIVE && d < D) store_pack(dk_dst + d, kacc[it]);
  }
}

// dst[long_row[r], h, :] = sum over slots s in [long_ptr[r], long_ptr[r + 1]) of
// part[s, h, :], in slot order. A thread per (long row, head, feature).
template <typename T, typename I>
__global__ void __launch_bounds__(256)
sg_sum_partials(const I* __restrict__ long_row, const I* __restrict__ long_ptr, long long n_long,
                int H, int F, const T* __restrict__ part, T* __restrict__ dst) {
  if (H <= 0 || F <= 0) return;
  sg::ItemWalk w;
  for (w.begin(H, F); w.item < n_long; w.next()) {
    const int d = (int)w.d;
    const int h = (int)w.h;
    const long long r = w.item;
    T acc = T(0);
    for (long long s = (long long)long_ptr[r]; s < (long long)long_ptr[r + 1]; ++s)
      acc += part[(s * H + h) * F + d];
    dst[((long long)long_row[r] * H + h) * F + d] = acc;
  }
}

// out[blockIdx.y, c] = sum of x[r, c] over the rows r of chunk blockIdx.y
// (rows_per_block rows), for a block of 32 x 8 threads: thread (tx, ty) adds rows
// ty, ty + 8, ... of the chunk for column 32 blockIdx.x + tx, then a fixed tree over ty.
// Applied repeatedly until one chunk is left; the order depends only on (R, C).
template <typename T>
__global__ void __launch_bounds__(256)
sg_column_sum(const T* __restrict__ x, long long R, long long C, long long rows_per_block,
              T* __restrict__ out) {
  __shared__ T red[8][32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const long long c = (long long)blockIdx.x * 32 + tx;
  const long long r0 = (long long)blockIdx.y * rows_per_block;
  const long long r1 = sg::sg_min_ll(R, r0 + rows_per_block);
  T acc = T(0);
  if (c < C) {
    for (long long r = r0 + ty; r < r1; r += 8) acc += x[r * C + c];
  }
  red[ty][tx] = acc;
  __syncthreads();
  for (int s = 4; s > 0; s >>= 1) {
    if (ty < s) red[ty][tx] += red[ty + s][tx];
    __syncthreads();
  }
  if (ty == 0 && c < C) out[(long long)blockIdx.y * C + c] = red[0][tx];
}

// Cosine: the gradient with respect to the unit row xhat = x / nc arrives in g; turn it
// into the gradient with respect to x, in place: (g - (g . xhat) xhat) / nc above the
// norm floor (nc > eps), g / eps below it (docs/math.md). A warp per row.
template <typename T>
__global__ void __launch_bounds__(128)
sg_unit_rows_bwd(const T* __restrict__ xhat, const T* __restrict__ nc, long long n_rows, int D, T eps,
                 T* __restrict__ g) {
  using namespace sg;
  const long long w = (long long)blockIdx.x * (long long)(blockDim.x >> 5) + (long long)(threadIdx.x >> 5);
  if (w >= n_rows) return;
  const int lane = threadIdx.x & 31;
  const T* xr = xhat + w * D;
  T* gr = g + w * D;
  T t = T(0);
  for (int d = lane; d < D; d += 32) t += gr[d] * xr[d];
  const T radial = warp_sum(t);
  const T n = nc[w];
  const bool above = n > eps;
  for (int d = lane; d < D; d += 32) gr[d] = (above ? gr[d] - radial * xr[d] : gr[d]) / n;
}
