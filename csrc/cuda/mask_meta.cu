#include "mask_meta.h"

namespace lth {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

// One warp per packed word: lane j reads column 32*w + j (32 coalesced bytes) and the ballot is the word.
__global__ void pack_mask_kernel(const uint8_t* __restrict__ mask, int64_t rows, int64_t cols,
                                 int64_t words, int32_t* __restrict__ packed) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (warp >= rows * words) return;  // whole warps exit together, so the ballot below stays full
  const int64_t r = warp / words;
  const int64_t c = (warp - r * words) * 32 + lane;
  const bool bit = c < cols && mask[r * cols + c] != 0;
  const unsigned word = __ballot_sync(0xffffffffu, bit);
  if (lane == 0) packed[warp] = static_cast<int32_t>(word);
}

__global__ void unpack_mask_kernel(const int32_t* __restrict__ packed, int64_t rows, int64_t cols,
                                   int64_t words, uint8_t* __restrict__ mask) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols;
  const int64_t c = i - r * cols;
  mask[i] = (static_cast<unsigned>(packed[r * words + (c >> 5)]) >> (c & 31)) & 1u;
}

// One block per tile; the block-wide OR is __syncthreads_or, so no atomics and no shared memory.
__global__ void tile_occupancy_kernel(const uint8_t* __restrict__ mask, int64_t rows, int64_t cols,
                                      int64_t bm, int64_t bn, int64_t tile_cols,
                                      uint8_t* __restrict__ occupancy) {
  const int64_t tile = blockIdx.x;
  const int64_t ti = tile / tile_cols;
  const int64_t tj = tile - ti * tile_cols;
  const int64_t r0 = ti * bm, c0 = tj * bn;
  const int64_t h = min(bm, rows - r0), w = min(bn, cols - c0);
  int any = 0;
  for (int64_t k = threadIdx.x; k < h * w && !any; k += blockDim.x) {
    const int64_t r = k / w;
    any = mask[(r0 + r) * cols + c0 + (k - r * w)] != 0;
  }
  any = __syncthreads_or(any);
  if (threadIdx.x == 0) occupancy[tile] = static_cast<uint8_t>(any != 0);
}

inline unsigned blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

}  // namespace

void pack_mask(const uint8_t* mask, int64_t rows, int64_t cols, int32_t* packed, cudaStream_t stream) {
  const int64_t words = (cols + 31) / 32;
  if (rows * words == 0) return;
  pack_mask_kernel<<<blocks_for(rows * words, kWarpsPerBlock), kThreads, 0, stream>>>(mask, rows, cols,
                                                                                      words, packed);
}

void unpack_mask(const int32_t* packed, int64_t rows, int64_t cols, uint8_t* mask, cudaStream_t stream) {
  const int64_t words = (cols + 31) / 32;
  if (rows * cols == 0) return;
  unpack_mask_kernel<<<blocks_for(rows * cols, kThreads), kThreads, 0, stream>>>(packed, rows, cols, words,
                                                                                 mask);
}

void tile_occupancy(const uint8_t* mask, int64_t rows, int64_t cols, int64_t bm, int64_t bn,
                    uint8_t* occupancy, cudaStream_t stream) {
  const int64_t tr = (rows + bm - 1) / bm, tc = (cols + bn - 1) / bn;
  if (tr * tc == 0) return;
  tile_occupancy_kernel<<<static_cast<unsigned>(tr * tc), kThreads, 0, stream>>>(mask, rows, cols, bm, bn,
                                                                                 tc, occupancy);
}

}  // namespace cuda
}  // namespace lth
