// Sparse x dense inference on the CPU: Y (B, N) = X (B, K) . W^T + bias with W (N, K) sparse.
// Raw pointers and sizes only (no ATen): the binding layer in python/ owns checks and allocation.
//
// Two formats of a masked weight. An entry is stored iff mask[n, k] != 0 (its value may still be 0).
//   CSR (the interchange format): row_ptr[N + 1] (int64), col_idx[nnz] (int32, ascending within a row),
//     values[nnz] (fp32).
//   SELL-8 (what the kernel reads; sliced ELLPACK): rows reordered by length, longest first, within windows of
//     kSortWindow rows, then cut into slices of kSliceRows rows; slice s holds len_s columns of 8 entries (one per
//     row: lane l is the slice's row l), len_s being its longest row, shorter rows padded with value 0 at their
//     last column (or column 0). Column indices are uint16 when K <= 65,536 (2 bytes less per entry to stream),
//     else int32. The whole layout is one byte buffer (one allocation, one argument per call):
//       slice_ptr int64[ns + 1]  first column of slice s (slice_ptr[ns]: all columns), ns = ceil(N / 8)
//       perm      int32[8 ns]    original row of lane l of slice s at 8 s + l (-1: none)
//       columns   from byte sell_data_offset(ns), each 8 indices then their 8 values: one stream, and a column's
//                 16-48 bytes of indices and values share cache lines.
#pragma once
#include <cstdint>

namespace lth {
namespace cpu {

constexpr int64_t kSliceRows = 8;
constexpr int64_t kSortWindow = 64;

// CSR pass 1: row_ptr[0..N] (exclusive prefix sum of kept entries per row); returns nnz.
int64_t csr_row_ptr(const uint8_t* mask, int64_t n, int64_t k, int64_t* row_ptr, int threads);

// CSR pass 2: col_idx / values of the kept entries of `weight` (row-major N x K), positions from row_ptr.
void csr_fill(const float* weight, const uint8_t* mask, int64_t n, int64_t k, const int64_t* row_ptr,
              int32_t* col_idx, float* values, int threads);

// Bytes of one column (8 indices of type I, 8 fp32 values), and where perm and the columns start in the buffer.
template <typename I>
constexpr int64_t sell_column_bytes() { return kSliceRows * static_cast<int64_t>(sizeof(I) + sizeof(float)); }
constexpr int64_t sell_perm_offset(int64_t ns) { return 8 * (ns + 1); }
constexpr int64_t sell_data_offset(int64_t ns) { return (sell_perm_offset(ns) + 4 * kSliceRows * ns + 63) / 64 * 64; }

// SELL pass 1 from CSR: perm[ceil(N/8) * 8], slice_ptr[ceil(N/8) + 1]; returns the number of columns.
int64_t sell_layout(const int64_t* row_ptr, int64_t n, int32_t* perm, int64_t* slice_ptr);

// SELL pass 2: the columns (from `data`, sell_column_bytes<I>() each). I is uint16_t (K <= 65,536) or int32_t.
template <typename I>
void sell_fill(const int64_t* row_ptr, const int32_t* col_idx, const float* values, int64_t n, const int32_t* perm,
               const int64_t* slice_ptr, uint8_t* data, int threads);

// y[b * n + j] = bias[j] + sum over row j of W of w * x[b * ldx + col]. bias may be null; x rows have stride ldx
// (elements), columns are contiguous; y is row-major (B, N) and fully written. K >= 1.
// `threads` OpenMP threads at most (the caller passes torch's setting; small problems run on one).
// `blob` is the whole SELL buffer (slice_ptr at its start).
template <typename I>
void sell_linear(const float* x, int64_t ldx, int64_t batch, int64_t k, int64_t n, const uint8_t* blob,
                 const float* bias, float* y, int threads);

// Which instruction path sell_linear takes on this CPU: "generic", or the packed path's ("avx2" or "avx512", the
// latter where the CPU has AVX-512F and a one-time timing finds it faster), "+", and the lanes path's fetch
// ("gather", "blend" or "insert", timed the same way; see cpu_sparse_x86.cpp). LTH_KERNELS_CPU_ISA=generic, avx2
// or avx512 and LTH_KERNELS_CPU_LANES=<fetch> force a choice; both are read once per process.
const char* sell_linear_isa();

}  // namespace cpu
}  // namespace lth
