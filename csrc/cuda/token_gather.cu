#include "token_gather.h"

#include <initializer_list>

namespace lth {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;  // one warp per row

// The widest vector (16, 8, 4, 2 or 1 bytes) dividing the row size and every base address and stride:
// rows of 384 bf16 (768 B) copy as 48 uint4 per row; an odd-sized or unaligned view degrades to narrower
// words instead of needing a separate scalar tail.
inline int vector_bytes(int64_t row_bytes, std::initializer_list<int64_t> offsets) {
  for (int w : {16, 8, 4, 2}) {
    bool ok = row_bytes % w == 0;
    for (int64_t o : offsets) ok = ok && o % w == 0;
    if (ok) return w;
  }
  return 1;
}

template <int W> struct Word;
template <> struct Word<16> { using T = uint4; };
template <> struct Word<8> { using T = uint2; };
template <> struct Word<4> { using T = uint32_t; };
template <> struct Word<2> { using T = uint16_t; };
template <> struct Word<1> { using T = uint8_t; };

// One warp per output row, lanes striding over the row's words; grid-stride over rows so huge batches
// need no huge grid. Loads go through the read-only path (__ldg) since x is never written here.
template <int W, typename Index>
__global__ void gather_tokens_kernel(const char* __restrict__ x, int64_t x_batch_stride, int64_t x_row_stride,
                                     const Index* __restrict__ index, int64_t index_stride,
                                     char* __restrict__ out, int64_t batch, int64_t kept, int64_t words) {
  using T = typename Word<W>::T;
  const int lane = threadIdx.x & 31;
  const int64_t rows = batch * kept;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); row < rows;
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t b = row / kept;
    const int64_t k = row - b * kept;
    const int64_t n = static_cast<int64_t>(index[b * index_stride + k]);
    const T* src = reinterpret_cast<const T*>(x + b * x_batch_stride + n * x_row_stride);
    T* dst = reinterpret_cast<T*>(out) + row * words;
    for (int64_t w = lane; w < words; w += 32) dst[w] = __ldg(src + w);
  }
}

template <int W>
__global__ void place_tokens_kernel(const char* __restrict__ base, const int32_t* __restrict__ inverse,
                                    const char* __restrict__ src, char* __restrict__ out, int64_t batch,
                                    int64_t tokens, int64_t kept, int64_t words) {
  using T = typename Word<W>::T;
  const int lane = threadIdx.x & 31;
  const int64_t rows = batch * tokens;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); row < rows;
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int32_t slot = inverse[row];
    T* dst = reinterpret_cast<T*>(out) + row * words;
    const T* from = nullptr;
    if (slot >= 0) {
      if (src != nullptr) from = reinterpret_cast<const T*>(src) + ((row / tokens) * kept + slot) * words;
    } else if (base != nullptr) {
      from = reinterpret_cast<const T*>(base) + row * words;
    }
    if (from != nullptr) {
      for (int64_t w = lane; w < words; w += 32) dst[w] = __ldg(from + w);
    } else {
      const T zero{};
      for (int64_t w = lane; w < words; w += 32) dst[w] = zero;
    }
  }
}

inline unsigned grid_for(int64_t rows) {
  // Enough blocks to fill any current GPU several times over; the kernels grid-stride beyond that.
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  return static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
}

template <int W>
void launch_gather(const void* x, int64_t xbs, int64_t xrs, const void* index, bool index_is_64, int64_t is,
                   void* out, int64_t batch, int64_t kept, int64_t row_bytes, cudaStream_t stream) {
  const unsigned grid = grid_for(batch * kept);
  const int64_t words = row_bytes / W;
  if (index_is_64) {
    gather_tokens_kernel<W, int64_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const char*>(x), xbs, xrs, static_cast<const int64_t*>(index), is, static_cast<char*>(out),
        batch, kept, words);
  } else {
    gather_tokens_kernel<W, int32_t><<<grid, kThreads, 0, stream>>>(
        static_cast<const char*>(x), xbs, xrs, static_cast<const int32_t*>(index), is, static_cast<char*>(out),
        batch, kept, words);
  }
}

template <int W>
void launch_place(const void* base, const int32_t* inverse, const void* src, void* out, int64_t batch,
                  int64_t tokens, int64_t kept, int64_t row_bytes, cudaStream_t stream) {
  place_tokens_kernel<W><<<grid_for(batch * tokens), kThreads, 0, stream>>>(
      static_cast<const char*>(base), inverse, static_cast<const char*>(src), static_cast<char*>(out), batch,
      tokens, kept, row_bytes / W);
}

inline int64_t addr(const void* p) { return static_cast<int64_t>(reinterpret_cast<uintptr_t>(p)); }

}  // namespace

void gather_tokens(const void* x, int64_t x_batch_stride, int64_t x_row_stride, const void* index,
                   bool index_is_64, int64_t index_stride, void* out, int64_t batch, int64_t kept,
                   int64_t row_bytes, cudaStream_t stream) {
  if (batch * kept == 0 || row_bytes == 0) return;
  const int w = vector_bytes(row_bytes, {addr(x), addr(out), x_batch_stride, x_row_stride});
  auto* launch = &launch_gather<1>;
  if (w == 16) launch = &launch_gather<16>;
  if (w == 8) launch = &launch_gather<8>;
  if (w == 4) launch = &launch_gather<4>;
  if (w == 2) launch = &launch_gather<2>;
  launch(x, x_batch_stride, x_row_stride, index, index_is_64, index_stride, out, batch, kept, row_bytes, stream);
}

void place_tokens(const void* base, const int32_t* inverse, const void* src, void* out, int64_t batch,
                  int64_t tokens, int64_t kept, int64_t row_bytes, cudaStream_t stream) {
  if (batch * tokens == 0 || row_bytes == 0) return;
  const int w = vector_bytes(row_bytes, {addr(base), addr(src), addr(out)});
  auto* launch = &launch_place<1>;
  if (w == 16) launch = &launch_place<16>;
  if (w == 8) launch = &launch_place<8>;
  if (w == 4) launch = &launch_place<4>;
  if (w == 2) launch = &launch_place<2>;
  launch(base, inverse, src, out, batch, tokens, kept, row_bytes, stream);
}

}  // namespace cuda
}  // namespace lth
