// Sparse x dense inference on the CPU: Y (B, N) = X (B, K) . W^T + bias with W (N, K) stored as CSR.
// Raw pointers and sizes only (no ATen): the binding layer in python/ owns checks and allocation.
//
// CSR of a masked weight: row_ptr[N + 1] (int64), col_idx[nnz] (int32, ascending within a row),
// values[nnz] (fp32). An entry is stored iff mask[n, k] != 0 (its value may still be 0).
#pragma once
#include <cstdint>

namespace lth {
namespace cpu {

// Pass 1: row_ptr[0..N] (exclusive prefix sum of kept entries per row); returns nnz.
int64_t csr_row_ptr(const uint8_t* mask, int64_t n, int64_t k, int64_t* row_ptr, int threads);

// Pass 2: col_idx / values of the kept entries of `weight` (row-major N x K), positions from row_ptr.
void csr_fill(const float* weight, const uint8_t* mask, int64_t n, int64_t k, const int64_t* row_ptr,
              int32_t* col_idx, float* values, int threads);

// y[b * n + j] = bias[j] + sum_p values[p] * x[b * ldx + col_idx[p]], p in row j. bias may be null.
// x rows have stride ldx (elements), columns are contiguous; y is row-major (B, N) and fully written.
// `threads` OpenMP threads at most (the caller passes torch's setting; small problems run on one).
void csr_linear(const float* x, int64_t ldx, int64_t batch, int64_t k, const int64_t* row_ptr,
                const int32_t* col_idx, const float* values, int64_t n, const float* bias, float* y, int threads);

// Which instruction path csr_linear takes on this CPU ("avx2" or "generic").
const char* csr_linear_isa();

}  // namespace cpu
}  // namespace lth
