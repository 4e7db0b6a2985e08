#include "cpu_sparse.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LTH_X86 1
#endif

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

namespace lth {
namespace cpu {

namespace {

constexpr int64_t S = kSliceRows;
// Batches up to this size gather X per entry (the 8 rows of a slice are the 8 vector lanes); larger ones pack
// X transposed so that each entry does one broadcast and up to 8 vector FMAs over 8-64 batch rows. Measured on
// AMD Zen 3: gather wins at B <= 2, packing from B = 3.
constexpr int64_t kGatherMaxBatch = 2;
// Batch rows per packed block at most (8 ymm accumulators per output row) and the L2 share of one packed
// K x block panel: its rows are read in random order, so a panel that spills to L3 leaves each entry waiting
// on an L3 round trip (measured: 1.6x at K = 3072, B = 64 with a 512 KiB L2).
constexpr int64_t kMaxBlock = 64;
constexpr int64_t kPanelBytes = 256 << 10;
// Below this many multiply-adds (~50 us on one core) the OpenMP fork/join, and on a shared machine a
// descheduled second thread, cost more than the work.
constexpr int64_t kParallelGrain = 1 << 18;

bool has_avx2() {
#ifdef LTH_X86
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return v;
#else
  return false;
#endif
}

int thread_count(int threads, int64_t work) { return work < kParallelGrain ? 1 : std::max(threads, 1); }

// ------------------------------------------------------------------------------------------ slice kernels
// Gather: out[b][l] = sum_c val[8c + l] * x[b * ldx + idx[8c + l]] for NB batch rows.
template <typename I>
using GatherFn = void (*)(const float*, int64_t, const I*, const float*, int64_t, float (*)[S]);
// Packed: tile[l * bp + j] = sum_c val[8c + l] * xt[idx[8c + l] * bp + j] for j < bp = 8V.
template <typename I>
using PackedFn = void (*)(const float*, int64_t, const I*, const float*, int64_t, float*);
// xt[kk * bp + j] = x[j * ldx + kk] for j < bb and kk in [k0, k1); 0 for bb <= j < bp.
using PackFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*);

template <typename I, int NB>
void gather_generic(const float* x, int64_t ldx, const I* idx, const float* val, int64_t len, float (*out)[S]) {
  float a[NB][S] = {};
  for (int64_t c = 0; c < len; ++c)
    for (int l = 0; l < S; ++l) {
      const float w = val[c * S + l];
      const int64_t j = static_cast<int64_t>(idx[c * S + l]);
      for (int b = 0; b < NB; ++b) a[b][l] += w * x[b * ldx + j];
    }
  std::memcpy(out, a, sizeof(a));
}

template <typename I, int V>
void packed_generic(const float* xt, int64_t bp, const I* idx, const float* val, int64_t len, float* tile) {
  for (int l = 0; l < S; ++l) {
    float acc[V * 8] = {};
    for (int64_t c = 0; c < len; ++c) {
      const float w = val[c * S + l];
      const float* xr = xt + static_cast<int64_t>(idx[c * S + l]) * bp;
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
__attribute__((target("avx2"))) inline __m256i load_idx(const uint16_t* p) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx2"))) inline __m256i load_idx(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// One vector gather per batch row and slice column; two accumulator sets hide the FMA latency.
template <typename I, int NB>
__attribute__((target("avx2,fma"))) void gather_avx2(const float* x, int64_t ldx, const I* idx, const float* val,
                                                     int64_t len, float (*out)[S]) {
  __m256 a[NB], b[NB];
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) a[i] = b[i] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 2 <= len; c += 2) {
    const __m256i i0 = load_idx(idx + c * S), i1 = load_idx(idx + c * S + S);
    const __m256 v0 = _mm256_loadu_ps(val + c * S), v1 = _mm256_loadu_ps(val + c * S + S);
#pragma GCC unroll 4
    for (int i = 0; i < NB; ++i) {
      a[i] = _mm256_fmadd_ps(v0, _mm256_i32gather_ps(x + i * ldx, i0, 4), a[i]);
      b[i] = _mm256_fmadd_ps(v1, _mm256_i32gather_ps(x + i * ldx, i1, 4), b[i]);
    }
  }
  if (c < len) {
    const __m256i i0 = load_idx(idx + c * S);
    const __m256 v0 = _mm256_loadu_ps(val + c * S);
#pragma GCC unroll 4
    for (int i = 0; i < NB; ++i) a[i] = _mm256_fmadd_ps(v0, _mm256_i32gather_ps(x + i * ldx, i0, 4), a[i]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) _mm256_storeu_ps(out[i], _mm256_add_ps(a[i], b[i]));
}

// R rows of the slice at once, V vectors (8V batch rows) each: R * V <= 8 accumulators, R independent rows
// to overlap (a slice's rows share one trip count, so there is no per-row branch to mispredict).
template <typename I, int V, int R>
__attribute__((target("avx2,fma"))) void rows_avx2(const float* xt, int64_t bp, const I* idx, const float* val,
                                                   int64_t len, float* tile) {
  __m256 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t c = 0; c < len; ++c) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_broadcast_ss(val + c * S + r);
      const float* xr = xt + static_cast<int64_t>(idx[c * S + r]) * bp;
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + 8 * v), acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(tile + r * bp + 8 * v, acc[r][v]);
}

constexpr int rows_for(int v) { return v >= 5 ? 1 : v >= 3 ? 2 : v == 2 ? 4 : 8; }

template <typename I, int V>
void packed_avx2(const float* xt, int64_t bp, const I* idx, const float* val, int64_t len, float* tile) {
  constexpr int R = rows_for(V);
  for (int r0 = 0; r0 < S; r0 += R) rows_avx2<I, V, R>(xt, bp, idx + r0, val + r0, len, tile + r0 * bp);
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
  GatherFn<I> gather[5];  // by batch rows 1..4
  PackedFn<I> packed[9];  // by vectors 1..8
  PackFn pack;
};

template <typename I>
const Kernels<I>& kernels() {
  static const Kernels<I> generic = {
      {nullptr, gather_generic<I, 1>, gather_generic<I, 2>, gather_generic<I, 3>, gather_generic<I, 4>},
      {nullptr, packed_generic<I, 1>, packed_generic<I, 2>, packed_generic<I, 3>, packed_generic<I, 4>,
       packed_generic<I, 5>, packed_generic<I, 6>, packed_generic<I, 7>, packed_generic<I, 8>},
      pack_generic};
#ifdef LTH_X86
  static const Kernels<I> avx2 = {
      {nullptr, gather_avx2<I, 1>, gather_avx2<I, 2>, gather_avx2<I, 3>, gather_avx2<I, 4>},
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

// ------------------------------------------------------------------------------------------ drivers
template <typename I>
void linear_gather(const Kernels<I>& kn, const float* x, int64_t ldx, int64_t batch, int64_t n, const int32_t* perm,
                   const int64_t* slice_ptr, const I* idx, const float* val, const float* bias, float* y, int nt) {
  const int64_t ns = (n + S - 1) / S;
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (nt > 1)
  for (int64_t s = 0; s < ns; ++s) {
    const int64_t p0 = slice_ptr[s], len = (slice_ptr[s + 1] - p0) / S;
    const int32_t* pr = perm + s * S;
    float bv[S], out[4][S];
    const int nl = slice_rows(pr, bias, bv);
    for (int64_t b0 = 0; b0 < batch; b0 += 4) {
      const int64_t nb = std::min<int64_t>(4, batch - b0);
      kn.gather[nb](x + b0 * ldx, ldx, idx + p0, val + p0, len, out);
      for (int64_t i = 0; i < nb; ++i) {
        float* dst = y + (b0 + i) * n;
        for (int l = 0; l < nl; ++l) dst[pr[l]] = out[i][l] + bv[l];
      }
    }
  }
}

template <typename I>
void linear_packed(const Kernels<I>& kn, const float* x, int64_t ldx, int64_t batch, int64_t k, int64_t n,
                   const int32_t* perm, const int64_t* slice_ptr, const I* idx, const float* val, const float* bias,
                   float* y, int nt) {
  // Blocks of equal size (a multiple of 8 rows) whose packed panel fits the L2 share.
  const int64_t cap = std::max<int64_t>(8, std::min(kMaxBlock, kPanelBytes / (4 * k) / 8 * 8));
  const int64_t nblk = (batch + cap - 1) / cap;
  const int64_t step = ((batch + nblk - 1) / nblk + 7) / 8 * 8;
  const int64_t ns = (n + S - 1) / S;
  // Reused across calls: a fresh buffer of this size comes from mmap and page-faults on every call.
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(nblk * k * step);
  if (buf.size() < need) buf.resize(need);
  float* const xt = buf.data();
  const int64_t kchunk = 256, nkc = (k + kchunk - 1) / kchunk;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < nblk * nkc; ++t) {
      const int64_t blk = t / nkc, k0 = (t % nkc) * kchunk;
      const int64_t b0 = blk * step, bb = std::min(step, batch - b0);
      kn.pack(x + b0 * ldx, ldx, bb, (bb + 7) / 8 * 8, k0, std::min(k, k0 + kchunk), xt + blk * k * step);
    }
    alignas(32) float tile[S * kMaxBlock];
    // Block-major order: the threads share one packed panel while they sweep the slices.
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < nblk * ns; ++t) {
      const int64_t blk = t / ns, s = t % ns;
      const int64_t b0 = blk * step, bb = std::min(step, batch - b0), bp = (bb + 7) / 8 * 8;
      const int64_t p0 = slice_ptr[s], len = (slice_ptr[s + 1] - p0) / S;
      kn.packed[bp / 8](xt + blk * k * step, bp, idx + p0, val + p0, len, tile);
      const int32_t* pr = perm + s * S;
      float bv[S];
      const int nl = slice_rows(pr, bias, bv);
      // Batch row outer: the slice's rows lie within one sort window, so each batch row touches few lines.
      for (int64_t i = 0; i < bb; ++i) {
        float* dst = y + (b0 + i) * n;
        for (int l = 0; l < nl; ++l) dst[pr[l]] = tile[l * bp + i] + bv[l];
      }
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
    slice_ptr[s + 1] = slice_ptr[s] + S * len;
  }
  return slice_ptr[ns];
}

template <typename I>
void sell_fill(const int64_t* row_ptr, const int32_t* col_idx, const float* values, int64_t n, const int32_t* perm,
               const int64_t* slice_ptr, I* idx, float* val, int threads) {
  const int64_t ns = (n + S - 1) / S;
  const int nt = thread_count(threads, slice_ptr[ns]);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t s = 0; s < ns; ++s) {
    const int64_t p0 = slice_ptr[s], len = (slice_ptr[s + 1] - p0) / S;
    for (int64_t l = 0; l < S; ++l) {
      const int32_t r = perm[s * S + l];
      const int64_t q0 = r < 0 ? 0 : row_ptr[r], m = r < 0 ? 0 : row_ptr[r + 1] - q0;
      // Padding repeats the row's last column (column 0 for an empty row) with value 0: a valid address.
      const int32_t pad = m ? col_idx[q0 + m - 1] : 0;
      for (int64_t c = 0; c < len; ++c) {
        idx[p0 + c * S + l] = static_cast<I>(c < m ? col_idx[q0 + c] : pad);
        val[p0 + c * S + l] = c < m ? values[q0 + c] : 0.f;
      }
    }
  }
}

template <typename I>
void sell_linear(const float* x, int64_t ldx, int64_t batch, int64_t k, int64_t n, const int32_t* perm,
                 const int64_t* slice_ptr, const I* idx, const float* val, const float* bias, float* y, int threads) {
  if (batch <= 0 || n <= 0) return;
  const Kernels<I>& kn = kernels<I>();
  const int64_t entries = slice_ptr[(n + S - 1) / S];
  if (batch <= kGatherMaxBatch)
    linear_gather<I>(kn, x, ldx, batch, n, perm, slice_ptr, idx, val, bias, y, thread_count(threads, entries * batch));
  else
    linear_packed<I>(kn, x, ldx, batch, k, n, perm, slice_ptr, idx, val, bias, y,
                     thread_count(threads, (entries + k) * std::max<int64_t>(batch, 8)));
}

#define LTH_SELL_INSTANTIATE(I)                                                                               \
  template void sell_fill<I>(const int64_t*, const int32_t*, const float*, int64_t, const int32_t*,           \
                             const int64_t*, I*, float*, int);                                                \
  template void sell_linear<I>(const float*, int64_t, int64_t, int64_t, int64_t, const int32_t*, const int64_t*, \
                               const I*, const float*, const float*, float*, int);
LTH_SELL_INSTANTIATE(uint16_t)
LTH_SELL_INSTANTIATE(int32_t)
#undef LTH_SELL_INSTANTIATE

}  // namespace cpu
}  // namespace lth
