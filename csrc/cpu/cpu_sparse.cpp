#include "cpu_sparse.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LTH_X86 1
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <numeric>
#include <vector>

namespace lth {
namespace cpu {

namespace {

constexpr int64_t S = kSliceRows;
// Batches up to this size read X per entry, the slice's 8 rows as 8 independent scalar accumulator chains per
// batch row; larger ones pack X transposed so that each entry does one broadcast and up to 8 vector FMAs over
// 8-64 batch rows. Measured on AMD Zen 4: packing wins from B = 3; at B = 1 scalar loads beat vgatherdps by
// 1.5x (a gather costs more than its 8 loads there).
constexpr int64_t kLanesMaxBatch = 2;
// Batch rows per packed block at most (8 ymm accumulators per output row) and the L2 share of one packed
// K x block panel: its rows are read in random order, so a panel that spills to L3 leaves each entry waiting
// on an L3 round trip (measured: 1.6x at K = 3072, B = 64 with a 512 KiB L2).
constexpr int64_t kMaxBlock = 64;
constexpr int64_t kPanelBytes = 256 << 10;
// Below this many multiply-adds (~50 us on one core) the OpenMP fork/join, and on a shared machine a
// descheduled second thread, cost more than the work.
constexpr int64_t kParallelGrain = 1 << 18;
constexpr int64_t kLanesCost = 6;

// LTH_KERNELS_CPU_ISA=generic (read once per process) takes the portable path on any CPU: how the tests reach it.
bool has_avx2() {
#ifdef LTH_X86
  static const char* const isa = std::getenv("LTH_KERNELS_CPU_ISA");
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        std::string_view(isa ? isa : "") != "generic";
  return v;
#else
  return false;
#endif
}

int thread_count(int threads, int64_t work) { return work < kParallelGrain ? 1 : std::max(threads, 1); }

// A column of the buffer: 8 indices, then 8 values.
template <typename I>
struct Col {
  static constexpr int64_t kBytes = sell_column_bytes<I>();
  static const I* idx(const uint8_t* d, int64_t c) { return reinterpret_cast<const I*>(d + c * kBytes); }
  static const float* val(const uint8_t* d, int64_t c) {
    return reinterpret_cast<const float*>(d + c * kBytes + S * sizeof(I));
  }
};

// The 8 column indices of a column; uint16 ones as two 64-bit loads and shifts (ALU work instead of 8 loads,
// the load ports being what bounds this loop).
inline void load_cols(const uint16_t* p, int64_t* j) {
  uint64_t w[2];
  std::memcpy(w, p, sizeof(w));
  for (int h = 0; h < 2; ++h)
    for (int q = 0; q < 4; ++q) j[4 * h + q] = static_cast<int64_t>((w[h] >> (16 * q)) & 0xffff);
}
inline void load_cols(const int32_t* p, int64_t* j) {
  for (int l = 0; l < S; ++l) j[l] = p[l];
}

// ------------------------------------------------------------------------------------------ slice kernels
// Lanes: out[b][l] = sum_c val[c][l] * x[b * ldx + idx[c][l]] for NB batch rows (8 NB independent sums).
using LanesFn = void (*)(const float*, int64_t, const uint8_t*, int64_t, float (*)[S]);
// Packed: tile[l * bp + j] = sum_c val[c][l] * xt[idx[c][l] * bp + j] for j < bp = 8V.
using PackedFn = void (*)(const float*, int64_t, const uint8_t*, int64_t, float*);
// xt[kk * bp + j] = x[j * ldx + kk] for j < bb and kk in [k0, k1); 0 for bb <= j < bp.
using PackFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*);

// One body for both instruction sets: inlined into a target("avx2,fma") caller, __builtin_fmaf becomes one
// vfmadd231ss; the generic build multiplies and adds.
template <typename I, int NB, bool kFma>
__attribute__((always_inline)) inline void lanes_body(const float* x, int64_t ldx, const uint8_t* d, int64_t len,
                                                      float (*out)[S]) {
  float a[NB][S] = {};
  for (int64_t c = 0; c < len; ++c) {
    int64_t j[S];
    load_cols(Col<I>::idx(d, c), j);
    const float* v = Col<I>::val(d, c);
#pragma GCC unroll 8
    for (int l = 0; l < S; ++l)
#pragma GCC unroll 2
      for (int b = 0; b < NB; ++b)
        a[b][l] = kFma ? __builtin_fmaf(v[l], x[b * ldx + j[l]], a[b][l]) : a[b][l] + v[l] * x[b * ldx + j[l]];
  }
  std::memcpy(out, a, sizeof(a));
}

template <typename I, int NB>
void lanes_generic(const float* x, int64_t ldx, const uint8_t* d, int64_t len, float (*out)[S]) {
  lanes_body<I, NB, false>(x, ldx, d, len, out);
}

template <typename I, int V>
void packed_generic(const float* xt, int64_t bp, const uint8_t* d, int64_t len, float* tile) {
  for (int l = 0; l < S; ++l) {
    float acc[V * 8] = {};
    for (int64_t c = 0; c < len; ++c) {
      const float w = Col<I>::val(d, c)[l];
      const float* xr = xt + static_cast<int64_t>(Col<I>::idx(d, c)[l]) * bp;
      for (int j = 0; j < V * 8; ++j) acc[j] += w * xr[j];
    }
    std::memcpy(tile + l * bp, acc, sizeof(acc));
  }
}

void pack_generic(const float* x, int64_t ldx, int64_t bb, int64_t bp, int64_t k0, int64_t k1, float* xt) {
  for (int64_t j = 0; j < bb; ++j)
    for (int64_t kk = k0; kk < k1; ++kk) xt[kk * bp + j] = x[j * ldx + kk];
  for (int64_t kk = k0; kk < k1; ++kk) std::memset(xt + kk * bp + bb, 0, sizeof(float) * (bp - bb));
}

#ifdef LTH_X86
template <typename I, int NB>
__attribute__((target("avx2,fma"))) void lanes_avx2(const float* x, int64_t ldx, const uint8_t* d, int64_t len,
                                                    float (*out)[S]) {
  lanes_body<I, NB, true>(x, ldx, d, len, out);
}

// R rows of the slice at once, V vectors (8V batch rows) each: R * V <= 8 accumulators, R independent rows
// to overlap (a slice's rows share one trip count, so there is no per-row branch to mispredict).
template <typename I, int V, int R>
__attribute__((target("avx2,fma"))) void rows_avx2(const float* xt, int64_t bp, const uint8_t* d, int r0,
                                                   int64_t len, float* tile) {
  __m256 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t c = 0; c < len; ++c) {
    const I* ix = Col<I>::idx(d, c) + r0;
    const float* vl = Col<I>::val(d, c) + r0;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_broadcast_ss(vl + r);
      const float* xr = xt + static_cast<int64_t>(ix[r]) * bp;
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + 8 * v), acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(tile + (r0 + r) * bp + 8 * v, acc[r][v]);
}

constexpr int rows_for(int v) { return v >= 5 ? 1 : v >= 3 ? 2 : v == 2 ? 4 : 8; }

template <typename I, int V>
void packed_avx2(const float* xt, int64_t bp, const uint8_t* d, int64_t len, float* tile) {
  constexpr int R = rows_for(V);
  for (int r0 = 0; r0 < S; r0 += R) rows_avx2<I, V, R>(xt, bp, d, r0, len, tile);
}

// 8 x 8 transposes where the block is whole, element copies at the edges.
__attribute__((target("avx2"))) void pack_avx2(const float* x, int64_t ldx, int64_t bb, int64_t bp, int64_t k0,
                                               int64_t k1, float* xt) {
  int64_t j = 0;
  for (; j + 8 <= bb; j += 8) {
    int64_t kk = k0;
    for (; kk + 8 <= k1; kk += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(x + (j + i) * ldx + kk);
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* d = xt + kk * bp + j;
      _mm256_storeu_ps(d + 0 * bp, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + 1 * bp, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + 2 * bp, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + 3 * bp, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + 4 * bp, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + 5 * bp, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + 6 * bp, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + 7 * bp, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (; kk < k1; ++kk)
      for (int i = 0; i < 8; ++i) xt[kk * bp + j + i] = x[(j + i) * ldx + kk];
  }
  for (; j < bb; ++j)
    for (int64_t kk = k0; kk < k1; ++kk) xt[kk * bp + j] = x[j * ldx + kk];
  for (int64_t kk = k0; kk < k1; ++kk) std::memset(xt + kk * bp + bb, 0, sizeof(float) * (bp - bb));
}
#endif

template <typename I>
struct Kernels {
  LanesFn lanes[kLanesMaxBatch + 1];  // by batch rows 1..kLanesMaxBatch
  PackedFn packed[9];                 // by vectors 1..8
  PackFn pack;
};

template <typename I>
const Kernels<I>& kernels() {
  static const Kernels<I> generic = {
      {nullptr, lanes_generic<I, 1>, lanes_generic<I, 2>},
      {nullptr, packed_generic<I, 1>, packed_generic<I, 2>, packed_generic<I, 3>, packed_generic<I, 4>,
       packed_generic<I, 5>, packed_generic<I, 6>, packed_generic<I, 7>, packed_generic<I, 8>},
      pack_generic};
#ifdef LTH_X86
  static const Kernels<I> avx2 = {
      {nullptr, lanes_avx2<I, 1>, lanes_avx2<I, 2>},
      {nullptr, packed_avx2<I, 1>, packed_avx2<I, 2>, packed_avx2<I, 3>, packed_avx2<I, 4>, packed_avx2<I, 5>,
       packed_avx2<I, 6>, packed_avx2<I, 7>, packed_avx2<I, 8>},
      pack_avx2};
  if (has_avx2()) return avx2;
#endif
  return generic;
}

// Lanes of a slice that hold a row (padding slots sit at the end of the last slice), their rows and biases.
int slice_rows(const int32_t* pr, const float* bias, float* bv) {
  int nl = S;
  while (nl > 0 && pr[nl - 1] < 0) --nl;
  for (int l = 0; l < nl; ++l) bv[l] = bias ? bias[pr[l]] : 0.f;
  return nl;
}

// The buffer's three parts.
template <typename I>
struct Sell {
  const int64_t* slice_ptr;
  const int32_t* perm;
  const uint8_t* data;
  Sell(const uint8_t* blob, int64_t ns)
      : slice_ptr(reinterpret_cast<const int64_t*>(blob)),
        perm(reinterpret_cast<const int32_t*>(blob + sell_perm_offset(ns))),
        data(blob + sell_data_offset(ns)) {}
  const uint8_t* slice(int64_t s) const { return data + slice_ptr[s] * Col<I>::kBytes; }
  int64_t len(int64_t s) const { return slice_ptr[s + 1] - slice_ptr[s]; }
};

// ------------------------------------------------------------------------------------------ drivers
template <typename I>
void linear_lanes(const Kernels<I>& kn, const float* x, int64_t ldx, int64_t batch, int64_t n, const Sell<I>& w,
                  const float* bias, float* y, int nt) {
  const int64_t ns = (n + S - 1) / S;
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
  for (int64_t s = 0; s < ns; ++s) {
    const int32_t* pr = w.perm + s * S;
    float bv[S], out[kLanesMaxBatch][S];
    const int nl = slice_rows(pr, bias, bv);
    for (int64_t b0 = 0; b0 < batch; b0 += kLanesMaxBatch) {
      const int64_t nb = std::min<int64_t>(kLanesMaxBatch, batch - b0);
      kn.lanes[nb](x + b0 * ldx, ldx, w.slice(s), w.len(s), out);
      for (int64_t i = 0; i < nb; ++i) {
        float* dst = y + (b0 + i) * n;
        for (int l = 0; l < nl; ++l) dst[pr[l]] = out[i][l] + bv[l];
      }
    }
  }
}

// One packed block: its slices from s0 to s1 into Y (bias added), the panel xt already packed.
template <typename I>
void block_slices(const Kernels<I>& kn, const float* xt, int64_t b0, int64_t bb, int64_t n, int64_t s0, int64_t s1,
                  const Sell<I>& w, const float* bias, float* y) {
  alignas(32) float tile[S * kMaxBlock];
  const int64_t bp = (bb + 7) / 8 * 8;
  for (int64_t s = s0; s < s1; ++s) {
    kn.packed[bp / 8](xt, bp, w.slice(s), w.len(s), tile);
    const int32_t* pr = w.perm + s * S;
    float bv[S];
    const int nl = slice_rows(pr, bias, bv);
    // Batch row outer: the slice's rows lie within one sort window, so each batch row touches few lines.
    for (int64_t i = 0; i < bb; ++i) {
      float* dst = y + (b0 + i) * n;
      for (int l = 0; l < nl; ++l) dst[pr[l]] = tile[l * bp + i] + bv[l];
    }
  }
}

// A thread's packing buffer, reused across calls: a fresh one of this size comes from mmap and page-faults on
// every call.
float* pack_buffer(size_t floats) {
  thread_local std::vector<float> buf;
  if (buf.size() < floats) buf.resize(floats);
  return buf.data();
}

template <typename I>
void linear_packed(const Kernels<I>& kn, const float* x, int64_t ldx, int64_t batch, int64_t k, int64_t n,
                   const Sell<I>& w, const float* bias, float* y, int nt) {
  // Blocks of equal size (a multiple of 8 rows) whose packed panel fits the L2 share; with several threads a
  // multiple of the thread count where the rows allow, so that each thread owns whole blocks: it packs its
  // panel into its own L2 and writes its own rows of Y. (Threads sharing one panel read half of it from the
  // other core's cache: measured 1.2x from 2 threads instead of 1.8x at B = 64.)
  const int64_t cap = std::max<int64_t>(8, std::min(kMaxBlock, kPanelBytes / (4 * k) / 8 * 8));
  int64_t nblk = (batch + cap - 1) / cap;
  if (nt > 1) nblk = std::min((nblk + nt - 1) / nt * nt, std::max<int64_t>(1, batch / 8));
  const int64_t step = ((batch + nblk - 1) / nblk + 7) / 8 * 8;
  nblk = (batch + step - 1) / step;
  const int64_t ns = (n + S - 1) / S;
  if (nt == 1 || nblk >= nt) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t b0 = blk * step, bb = std::min(step, batch - b0), bp = (bb + 7) / 8 * 8;
      float* xt = pack_buffer(static_cast<size_t>(k * bp));
      kn.pack(x + b0 * ldx, ldx, bb, bp, 0, k, xt);
      block_slices<I>(kn, xt, b0, bb, n, 0, ns, w, bias, y);
    }
    return;
  }
  // Fewer blocks than threads (a batch under 8 rows per thread): every thread packs the (small) panels itself
  // and the threads split the slices.
#pragma omp parallel num_threads(nt)
  {
    float* xt = pack_buffer(static_cast<size_t>(nblk * k * step));
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t b0 = blk * step, bb = std::min(step, batch - b0);
      kn.pack(x + b0 * ldx, ldx, bb, (bb + 7) / 8 * 8, 0, k, xt + blk * k * step);
    }
    constexpr int64_t kChunk = kSortWindow / S;  // slices per task: one sort window, whole cache lines of Y
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < nblk * ((ns + kChunk - 1) / kChunk); ++t) {
      const int64_t nchunk = (ns + kChunk - 1) / kChunk, blk = t / nchunk, s0 = (t % nchunk) * kChunk;
      const int64_t b0 = blk * step, bb = std::min(step, batch - b0);
      block_slices<I>(kn, xt + blk * k * step, b0, bb, n, s0, std::min(ns, s0 + kChunk), w, bias, y);
    }
  }
}

}  // namespace

const char* sell_linear_isa() { return has_avx2() ? "avx2" : "generic"; }

int64_t csr_row_ptr(const uint8_t* mask, int64_t n, int64_t k, int64_t* row_ptr, int threads) {
  const int nt = thread_count(threads, n * k / 8);
  row_ptr[0] = 0;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* m = mask + j * k;
    int64_t c = 0;
    for (int64_t i = 0; i < k; ++i) c += m[i] != 0;
    row_ptr[j + 1] = c;
  }
  for (int64_t j = 0; j < n; ++j) row_ptr[j + 1] += row_ptr[j];
  return row_ptr[n];
}

void csr_fill(const float* weight, const uint8_t* mask, int64_t n, int64_t k, const int64_t* row_ptr,
              int32_t* col_idx, float* values, int threads) {
  const int nt = thread_count(threads, n * k / 8);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* m = mask + j * k;
    const float* w = weight + j * k;
    int64_t p = row_ptr[j];
    for (int64_t i = 0; i < k; ++i) {
      if (m[i]) {
        col_idx[p] = static_cast<int32_t>(i);
        values[p] = w[i];
        ++p;
      }
    }
  }
}

int64_t sell_layout(const int64_t* row_ptr, int64_t n, int32_t* perm, int64_t* slice_ptr) {
  const int64_t ns = (n + S - 1) / S;
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  // Longest rows first within each window: the rows of a slice then have nearly one length (little padding)
  // and lie close together in Y (few cache lines per output row).
  const auto longer = [row_ptr](int32_t a, int32_t b) { return row_ptr[a + 1] - row_ptr[a] > row_ptr[b + 1] - row_ptr[b]; };
  for (int64_t w0 = 0; w0 < n; w0 += kSortWindow)
    std::stable_sort(order.begin() + w0, order.begin() + std::min(n, w0 + kSortWindow), longer);
  slice_ptr[0] = 0;
  for (int64_t s = 0; s < ns; ++s) {
    int64_t len = 0;
    for (int64_t slot = s * S; slot < (s + 1) * S; ++slot) {
      perm[slot] = slot < n ? order[slot] : -1;
      if (slot < n) len = std::max(len, row_ptr[order[slot] + 1] - row_ptr[order[slot]]);
    }
    slice_ptr[s + 1] = slice_ptr[s] + len;
  }
  return slice_ptr[ns];
}

template <typename I>
void sell_fill(const int64_t* row_ptr, const int32_t* col_idx, const float* values, int64_t n, const int32_t* perm,
               const int64_t* slice_ptr, uint8_t* data, int threads) {
  const int64_t ns = (n + S - 1) / S;
  const int nt = thread_count(threads, S * slice_ptr[ns]);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t s = 0; s < ns; ++s) {
    uint8_t* d = data + slice_ptr[s] * Col<I>::kBytes;
    const int64_t len = slice_ptr[s + 1] - slice_ptr[s];
    for (int64_t l = 0; l < S; ++l) {
      const int32_t r = perm[s * S + l];
      const int64_t q0 = r < 0 ? 0 : row_ptr[r], m = r < 0 ? 0 : row_ptr[r + 1] - q0;
      // Padding repeats the row's last column (column 0 for an empty row) with value 0: a valid address.
      const int32_t pad = m ? col_idx[q0 + m - 1] : 0;
      for (int64_t c = 0; c < len; ++c) {
        const I i = static_cast<I>(c < m ? col_idx[q0 + c] : pad);
        const float v = c < m ? values[q0 + c] : 0.f;
        std::memcpy(d + c * Col<I>::kBytes + l * sizeof(I), &i, sizeof(I));
        std::memcpy(d + c * Col<I>::kBytes + S * sizeof(I) + l * sizeof(float), &v, sizeof(float));
      }
    }
  }
}

template <typename I>
void sell_linear(const float* x, int64_t ldx, int64_t batch, int64_t k, int64_t n, const uint8_t* blob,
                 const float* bias, float* y, int threads) {
  if (batch <= 0 || n <= 0) return;
  const Kernels<I>& kn = kernels<I>();
  const int64_t ns = (n + S - 1) / S;
  const Sell<I> w(blob, ns);
  const int64_t entries = S * w.slice_ptr[ns];
  if (batch <= kLanesMaxBatch)
    // A scalar multiply-add here costs ~6x one lane of the packed path's vector FMAs: weigh it so.
    linear_lanes<I>(kn, x, ldx, batch, n, w, bias, y, thread_count(threads, kLanesCost * entries * batch));
  else
    linear_packed<I>(kn, x, ldx, batch, k, n, w, bias, y,
                     thread_count(threads, (entries + k) * std::max<int64_t>(batch, 8)));
}

#define LTH_SELL_INSTANTIATE(I)                                                                               \
  template void sell_fill<I>(const int64_t*, const int32_t*, const float*, int64_t, const int32_t*,           \
                             const int64_t*, uint8_t*, int);                                                  \
  template void sell_linear<I>(const float*, int64_t, int64_t, int64_t, int64_t, const uint8_t*, const float*,  \
                               float*, int);
LTH_SELL_INSTANTIATE(uint16_t)
LTH_SELL_INSTANTIATE(int32_t)
#undef LTH_SELL_INSTANTIATE

}  // namespace cpu
}  // namespace lth
