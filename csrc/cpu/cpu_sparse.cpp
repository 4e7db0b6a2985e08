#include "cpu_sparse.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_sparse_kernels.h"

namespace lth {
namespace cpu {

namespace {

using namespace detail;

// Below this many multiply-adds (~50 us on one core) the OpenMP fork/join, and on a shared machine a
// descheduled second thread, cost more than the work.
constexpr int64_t kParallelGrain = 1 << 18;
constexpr int64_t kLanesCost = 6;
int thread_count(int threads, int64_t work) { return work < kParallelGrain ? 1 : std::max(threads, 1); }

// ------------------------------------------------------------------------------------------ portable kernels
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

template <typename I>
const Kernels<I>& kernels() {
  static const Kernels<I> generic = {
      {nullptr, lanes_generic<I, 1>, lanes_generic<I, 2>},
      {nullptr, packed_generic<I, 1>, packed_generic<I, 2>},
      transpose_generic, 8, kMaxBlock};
  static const Kernels<I>* const simd = x86_kernels<I>();
  return simd ? *simd : generic;
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
// Thread t of T takes slices [split(t), split(t + 1)): equal shares of the columns (the work), cut at multiples of
// `grain` slices. A static split: with 2 threads at 768 x 768, 90 %, B = 1 7.7 us against 8.5 for dynamic chunks
// of 16 slices, B = 8 15.4 against 20.1 for dynamic windows (their last chunks left one thread waiting).
int64_t work_split(const int64_t* slice_ptr, int64_t ns, int t, int nt, int64_t grain) {
  if (t >= nt) return ns;
  const int64_t goal = slice_ptr[ns] / nt * t + slice_ptr[ns] % nt * t / nt;
  const int64_t s = std::lower_bound(slice_ptr, slice_ptr + ns, goal) - slice_ptr;
  return std::min(ns, (s + grain / 2) / grain * grain);
}

// This thread's place in the team and the team's size: the team OpenMP gives may be smaller than asked (a call
// from inside another parallel region runs on one thread), and the static split must cover every slice.
struct Team {
  int id = 0, size = 1;
  Team() {
#ifdef _OPENMP
    id = omp_get_thread_num();
    size = omp_get_num_threads();
#endif
  }
};

template <typename I>
void linear_lanes(const Kernels<I>& kn, const float* x, int64_t ldx, int64_t batch, int64_t n, const Sell<I>& w,
                  const float* bias, float* y, int nt) {
  const int64_t ns = (n + S - 1) / S;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const Team t;
    const int64_t s0 = work_split(w.slice_ptr, ns, t.id, t.size, 1);
    const int64_t s1 = work_split(w.slice_ptr, ns, t.id + 1, t.size, 1);
    for (int64_t s = s0; s < s1; ++s) {
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
}

// One packed block: its slices from s0 to s1 (whole sort windows: s0 a multiple of kWindowSlices) into Y, bias
// added, the panel xt already packed. A window's rows are a permutation of 64 consecutive rows of Y: its tiles are
// put back in row order, then transposed into Y with vector stores. (Storing each tile straight to its permuted
// places cost half the call at N = 3072, B = 64, 99 %: scattered scalar stores into rows of Y 12 KiB apart.)
constexpr int64_t kWindowSlices = kSortWindow / S;
template <typename I>
void block_slices(const Kernels<I>& kn, const float* xt, int64_t b0, int64_t bb, int64_t n, int64_t s0, int64_t s1,
                  const Sell<I>& w, const float* bias, float* y) {
  constexpr int64_t kOutStride = kSortWindow + 8;  // not a multiple of 4 KiB, nor of a line set
  alignas(64) float tile[S * kMaxPanel], rows[kSortWindow * kMaxPanel], out[kMaxPanel * kOutStride];
  const int64_t bp = kn.panel_rows(bb);
  for (int64_t ws = s0; ws < s1; ws += kWindowSlices) {
    const int64_t we = std::min(s1, ws + kWindowSlices), r0 = ws * S, nr = std::min(n, we * S) - r0;
    for (int64_t s = ws; s < we; ++s) {
      kn.packed[bp / 8](xt, bp, w.slice(s), w.len(s), tile);
      const int32_t* pr = w.perm + s * S;
      for (int l = 0; l < S && pr[l] >= 0; ++l) std::memcpy(rows + (pr[l] - r0) * bp, tile + l * bp, sizeof(float) * bp);
    }
    // Where rows of Y lie a multiple of 4 KiB apart (N = 3072) the transposes' 8 stores to 8 rows share L1 sets and
    // 4K-alias the loads (57 us of 151 at B = 64, 99 %, against 24 at N = 3000): there through a local buffer,
    // then each batch row's span in one run of stores (elsewhere that copy costs ~3 %).
    if (n * sizeof(float) % 4096 != 0) {
      kn.transpose(rows, bp, nr, bb, bias ? bias + r0 : nullptr, y + b0 * n + r0, n);
      continue;
    }
    kn.transpose(rows, bp, nr, bb, bias ? bias + r0 : nullptr, out, kOutStride);
    for (int64_t i = 0; i < bb; ++i) std::memcpy(y + (b0 + i) * n + r0, out + i * kOutStride, sizeof(float) * nr);
  }
}

// A thread's packing buffer, reused across calls: a fresh one of this size comes from mmap and page-faults on
// every call. Aligned to a cache line: a panel row of 16 floats is then one line, not two (malloc's 16-byte
// alignment made B = 64 at 1536 -> 384 take 293 us instead of 200 in some processes).
float* pack_buffer(size_t floats) {
  constexpr size_t kLine = 64 / sizeof(float);
  thread_local std::vector<float> buf;
  if (buf.size() < floats + kLine) buf.resize(floats + kLine);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((kLine * sizeof(float) - p % (kLine * sizeof(float))) % (kLine * sizeof(float))) / sizeof(float);
}

// The panel of bb batch rows: xt[kk * bp + j] = x[j * ldx + kk], zero for bb <= j < bp.
template <typename I>
void pack(const Kernels<I>& kn, const float* x, int64_t ldx, int64_t bb, int64_t bp, int64_t k, float* xt) {
  kn.transpose(x, ldx, bb, k, nullptr, xt, bp);
  if (bp > bb)
    for (int64_t kk = 0; kk < k; ++kk) std::memset(xt + kk * bp + bb, 0, sizeof(float) * (bp - bb));
}

template <typename I>
void linear_packed(const Kernels<I>& kn, const float* x, int64_t ldx, int64_t batch, int64_t k, int64_t n,
                   const Sell<I>& w, const float* bias, float* y, int nt) {
  // Blocks of equal size (a multiple of 8 rows) whose packed panel fits the L2 share; with several threads a
  // multiple of the thread count where the rows allow, so that each thread owns whole blocks: it packs its
  // panel into its own L2 and writes its own rows of Y. (Threads sharing one panel read half of it from the
  // other core's cache: measured 1.2x from 2 threads instead of 1.8x at B = 64.)
  const int64_t cap = std::max<int64_t>(8, std::min(kn.max_block, kPanelBytes / (4 * k) / kn.wide * kn.wide));
  int64_t nblk = (batch + cap - 1) / cap;
  if (nt > 1) nblk = std::min((nblk + nt - 1) / nt * nt, std::max<int64_t>(1, batch / 8));
  const int64_t step = std::min(cap, kn.panel_rows((batch + nblk - 1) / nblk));
  nblk = (batch + step - 1) / step;
  const int64_t ns = (n + S - 1) / S;
  if (nt == 1 || nblk >= nt) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t b0 = blk * step, bb = std::min(step, batch - b0), bp = kn.panel_rows(bb);
      float* xt = pack_buffer(static_cast<size_t>(k * bp));
      pack(kn, x + b0 * ldx, ldx, bb, bp, k, xt);
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
      pack(kn, x + b0 * ldx, ldx, bb, kn.panel_rows(bb), k, xt + blk * k * step);
    }
    // each thread an equal share of every block's work, cut at whole sort windows (whole cache lines of Y)
    const Team t;
    const int64_t s0 = work_split(w.slice_ptr, ns, t.id, t.size, kWindowSlices);
    const int64_t s1 = work_split(w.slice_ptr, ns, t.id + 1, t.size, kWindowSlices);
    for (int64_t blk = 0; blk < nblk && s0 < s1; ++blk) {
      const int64_t b0 = blk * step, bb = std::min(step, batch - b0);
      block_slices<I>(kn, xt + blk * k * step, b0, bb, n, s0, s1, w, bias, y);
    }
  }
}

}  // namespace

const char* sell_linear_isa() { return x86_kernels<uint16_t>() ? x86_isa() : "generic"; }

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
