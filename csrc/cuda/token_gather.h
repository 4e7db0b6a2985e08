// Token row gather / place on the GPU (see lth_kernels/ops/token_gather.py for the semantics).
// Byte-level row copies: the kernels do not know the element type, only the row size in bytes.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lth {
namespace cuda {

// out[b, k, :] = x[b, index[b, k], :]; rows of x are `x_row_stride` bytes apart, samples `x_batch_stride`.
// index is int32 (index_is_64 = false) or int64, with row stride `index_stride` elements.
void gather_tokens(const void* x, int64_t x_batch_stride, int64_t x_row_stride, const void* index,
                   bool index_is_64, int64_t index_stride, void* out, int64_t batch, int64_t kept,
                   int64_t row_bytes, cudaStream_t stream);

// out[b, n, :] = inverse[b, n] >= 0 ? src[b, inverse[b, n], :] : base[b, n, :]; a null base or src reads as
// zeros. base/src/out are contiguous (B, N|K, C); inverse is (B, N) int32.
void place_tokens(const void* base, const int32_t* inverse, const void* src, void* out, int64_t batch,
                  int64_t tokens, int64_t kept, int64_t row_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace lth
