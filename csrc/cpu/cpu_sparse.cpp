#include "cpu_sparse.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>

namespace lth {
namespace cpu {

namespace {

// Batch rows per packed block: 8 AVX2 vectors of 8 floats, i.e. 8 accumulators per output row.
constexpr int64_t kBlock = 64;
// Output rows computed before a transposed store into Y (the tile lives in L1).
constexpr int64_t kTileRows = 8;
// Batches up to this size skip packing and gather X per non-zero: padding 1-2 rows to a vector of 8 wastes
// 4-8x of the FMAs (measured: gather wins at B <= 2, the packed path from B = 3).
constexpr int64_t kGatherMaxBatch = 2;
// Below this many multiply-adds (~50 us on one core) the OpenMP fork/join, and on a shared machine a
// descheduled second thread, cost more than the work.
constexpr int64_t kParallelGrain = 1 << 18;

bool has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return v;
#else
  return false;
#endif
}

int thread_count(int threads, int64_t work) { return work < kParallelGrain ? 1 : std::max(threads, 1); }

// xt[kk * bp + j] = x[(b0 + j) * ldx + kk] for j < bb and 0 for bb <= j < bp: each non-zero then reads the
// bp batch values of its column as contiguous vectors.
void pack_block(const float* x, int64_t ldx, int64_t b0, int64_t bb, int64_t bp, int64_t k0, int64_t k1,
                float* xt) {
  for (int64_t kk = k0; kk < k1; ++kk) std::memset(xt + kk * bp + bb, 0, sizeof(float) * (bp - bb));
  for (int64_t j = 0; j < bb; ++j) {
    const float* src = x + (b0 + j) * ldx;
    for (int64_t kk = k0; kk < k1; ++kk) xt[kk * bp + j] = src[kk];
  }
}

// One output row over one packed block of V*8 batch rows: out[j] = bias + sum_p val[p] * xt[ci[p] * bp + j].
// U independent accumulator sets over the non-zeros hide the FMA latency when V is small.
using RowFn = void (*)(const float*, int64_t, const int32_t*, const float*, int64_t, float, float*);

template <int V, int U>
void row_generic(const float* xt, int64_t bp, const int32_t* ci, const float* val, int64_t nnz, float bias,
                 float* out) {
  float acc[U][V * 8];
  for (int u = 0; u < U; ++u)
    for (int j = 0; j < V * 8; ++j) acc[u][j] = u == 0 ? bias : 0.f;
  int64_t p = 0;
  for (; p + U <= nnz; p += U)
    for (int u = 0; u < U; ++u) {
      const float w = val[p + u];
      const float* xr = xt + static_cast<int64_t>(ci[p + u]) * bp;
      for (int j = 0; j < V * 8; ++j) acc[u][j] += w * xr[j];
    }
  for (; p < nnz; ++p) {
    const float w = val[p];
    const float* xr = xt + static_cast<int64_t>(ci[p]) * bp;
    for (int j = 0; j < V * 8; ++j) acc[0][j] += w * xr[j];
  }
  for (int j = 0; j < V * 8; ++j) {
    float s = acc[0][j];
    for (int u = 1; u < U; ++u) s += acc[u][j];
    out[j] = s;
  }
}

#if defined(__x86_64__) || defined(__i386__)
template <int V, int U>
__attribute__((target("avx2,fma"))) void row_avx2(const float* xt, int64_t bp, const int32_t* ci,
                                                  const float* val, int64_t nnz, float bias, float* out) {
  __m256 acc[U][V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) acc[0][v] = _mm256_set1_ps(bias);
#pragma GCC unroll 8
  for (int u = 1; u < U; ++u)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[u][v] = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + U <= nnz; p += U) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const __m256 w = _mm256_broadcast_ss(val + p + u);
      const float* xr = xt + static_cast<int64_t>(ci[p + u]) * bp;
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[u][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + 8 * v), acc[u][v]);
    }
  }
  for (; p < nnz; ++p) {
    const __m256 w = _mm256_broadcast_ss(val + p);
    const float* xr = xt + static_cast<int64_t>(ci[p]) * bp;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[0][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + 8 * v), acc[0][v]);
  }
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
    __m256 s = acc[0][v];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][v]);
    _mm256_storeu_ps(out + 8 * v, s);
  }
}

// Sparse dot product for one batch row: gathers x at the column indices, 16 non-zeros per step.
__attribute__((target("avx2,fma"))) float dot_avx2(const float* x, const int32_t* ci, const float* val,
                                                   int64_t nnz) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + 16 <= nnz; p += 16) {
    const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ci + p));
    const __m256i i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ci + p + 8));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + p), _mm256_i32gather_ps(x, i0, 4), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(val + p + 8), _mm256_i32gather_ps(x, i1, 4), a1);
  }
  if (p + 8 <= nnz) {
    const __m256i i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ci + p));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + p), _mm256_i32gather_ps(x, i0, 4), a0);
    p += 8;
  }
  a0 = _mm256_add_ps(a0, a1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; p < nnz; ++p) r += val[p] * x[ci[p]];
  return r;
}
#endif

float dot_generic(const float* x, const int32_t* ci, const float* val, int64_t nnz) {
  float a[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t p = 0;
  for (; p + 4 <= nnz; p += 4)
    for (int u = 0; u < 4; ++u) a[u] += val[p + u] * x[ci[p + u]];
  for (; p < nnz; ++p) a[0] += val[p] * x[ci[p]];
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// Accumulator sets per vector count: about 8 independent FMA chains without spilling the 16 ymm registers.
constexpr int unroll_for(int v) { return std::max(1, std::min(4, 8 / v)); }

#define LTH_ROW_TABLE(fn)                                                                                     \
  {nullptr,          fn<1, unroll_for(1)>, fn<2, unroll_for(2)>, fn<3, unroll_for(3)>, fn<4, unroll_for(4)>, \
   fn<5, unroll_for(5)>, fn<6, unroll_for(6)>, fn<7, unroll_for(7)>, fn<8, unroll_for(8)>}

const RowFn kGenericRows[9] = LTH_ROW_TABLE(row_generic);
#if defined(__x86_64__) || defined(__i386__)
const RowFn kAvx2Rows[9] = LTH_ROW_TABLE(row_avx2);
#endif

void linear_gather(const float* x, int64_t ldx, int64_t batch, const int64_t* row_ptr, const int32_t* col_idx,
                   const float* values, int64_t n, const float* bias, float* y, int nt) {
  const bool avx2 = has_avx2();
#pragma omp parallel for schedule(dynamic, 64) num_threads(nt) if (nt > 1)
  for (int64_t j = 0; j < n; ++j) {
    const int64_t p0 = row_ptr[j], nnz = row_ptr[j + 1] - p0;
    const float b = bias ? bias[j] : 0.f;
    for (int64_t i = 0; i < batch; ++i) {
      const float* xi = x + i * ldx;
#if defined(__x86_64__) || defined(__i386__)
      const float d = avx2 ? dot_avx2(xi, col_idx + p0, values + p0, nnz) : dot_generic(xi, col_idx + p0, values + p0, nnz);
#else
      const float d = dot_generic(xi, col_idx + p0, values + p0, nnz);
#endif
      y[i * n + j] = b + d;
    }
  }
}

}  // namespace

const char* csr_linear_isa() { return has_avx2() ? "avx2" : "generic"; }

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

void csr_linear(const float* x, int64_t ldx, int64_t batch, int64_t k, const int64_t* row_ptr,
                const int32_t* col_idx, const float* values, int64_t n, const float* bias, float* y, int threads) {
  if (batch <= 0 || n <= 0) return;
  const int64_t nnz = row_ptr[n];
  if (batch <= kGatherMaxBatch) {
    linear_gather(x, ldx, batch, row_ptr, col_idx, values, n, bias, y, thread_count(threads, nnz * batch));
    return;
  }
  const RowFn* rows =
#if defined(__x86_64__) || defined(__i386__)
      has_avx2() ? kAvx2Rows :
#endif
                 kGenericRows;
  const int64_t nblk = (batch + kBlock - 1) / kBlock;
  const int64_t ntile = (n + kTileRows - 1) / kTileRows;
  // Each block is packed with a stride of K * kBlock floats; the last one is padded to a multiple of 8 rows.
  std::unique_ptr<float[]> xt(new float[static_cast<size_t>(nblk * k * kBlock)]);
  const int64_t kchunk = 256;
  const int64_t nkc = (k + kchunk - 1) / kchunk;
  const int nt = thread_count(threads, (nnz + k) * std::max<int64_t>(batch, 8));
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < nblk * nkc; ++t) {
      const int64_t blk = t / nkc, k0 = (t % nkc) * kchunk;
      const int64_t b0 = blk * kBlock, bb = std::min(kBlock, batch - b0);
      pack_block(x, ldx, b0, bb, (bb + 7) / 8 * 8, k0, std::min(k, k0 + kchunk), xt.get() + blk * k * kBlock);
    }
    alignas(32) float tile[kTileRows][kBlock];
    // Block-major order: the threads share one packed block (it stays in L2) while they sweep the rows.
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < nblk * ntile; ++t) {
      const int64_t blk = t / ntile, j0 = (t % ntile) * kTileRows;
      const int64_t b0 = blk * kBlock, bb = std::min(kBlock, batch - b0), bp = (bb + 7) / 8 * 8;
      const int64_t rr = std::min(kTileRows, n - j0);
      const float* xb = xt.get() + blk * k * kBlock;
      const RowFn fn = rows[bp / 8];
      for (int64_t r = 0; r < rr; ++r) {
        const int64_t p0 = row_ptr[j0 + r];
        fn(xb, bp, col_idx + p0, values + p0, row_ptr[j0 + r + 1] - p0, bias ? bias[j0 + r] : 0.f, tile[r]);
      }
      for (int64_t i = 0; i < bb; ++i) {
        float* dst = y + (b0 + i) * n + j0;
        for (int64_t r = 0; r < rr; ++r) dst[r] = tile[r][i];
      }
    }
  }
}

}  // namespace cpu
}  // namespace lth
