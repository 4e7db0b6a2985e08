#include "mask_meta.h"

#include <algorithm>
#include <cstring>

namespace lth {
namespace cpu {

namespace {
// Below this many mask bytes the OpenMP fork/join costs more than the work.
constexpr int64_t kParallelGrain = 1 << 16;

// Rows are independent (each owns its output row), so they split across threads without synchronisation.
template <class RowFn>
void for_each_row(int64_t rows, int64_t cols, RowFn&& row_fn) {
#pragma omp parallel for schedule(static) if (rows * cols > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) row_fn(r);
}
}  // namespace

void pack_mask(const uint8_t* mask, int64_t rows, int64_t cols, int32_t* packed) {
  const int64_t words = (cols + 31) / 32;
  for_each_row(rows, cols, [&](int64_t r) {
    const uint8_t* src = mask + r * cols;
    int32_t* dst = packed + r * words;
    for (int64_t w = 0; w < words; ++w) {
      const int64_t c0 = w * 32;
      const int64_t n = std::min<int64_t>(32, cols - c0);
      uint32_t bits = 0;
      // Branch-free so the compiler can vectorise the 32-byte strip.
      for (int64_t j = 0; j < n; ++j) bits |= static_cast<uint32_t>(src[c0 + j] != 0) << j;
      dst[w] = static_cast<int32_t>(bits);
    }
  });
}

void unpack_mask(const int32_t* packed, int64_t rows, int64_t cols, uint8_t* mask) {
  const int64_t words = (cols + 31) / 32;
  // Words are read unsigned so the shift of bit 31 brings in zeros, not copies of the sign.
  const uint32_t* words_of = reinterpret_cast<const uint32_t*>(packed);
  for_each_row(rows, cols, [&](int64_t r) {
    for (int64_t c = 0; c < cols; ++c) {
      mask[r * cols + c] = static_cast<uint8_t>((words_of[r * words + (c >> 5)] >> (c & 31)) & 1u);
    }
  });
}

void tile_occupancy(const uint8_t* mask, int64_t rows, int64_t cols, int64_t bm, int64_t bn,
                    uint8_t* occupancy) {
  const int64_t tr = (rows + bm - 1) / bm;
  const int64_t tc = (cols + bn - 1) / bn;
  // One tile row per iteration: each thread owns whole output rows, so no two threads write one byte.
#pragma omp parallel for schedule(static) if (rows * cols > kParallelGrain)
  for (int64_t i = 0; i < tr; ++i) {
    uint8_t* out = occupancy + i * tc;
    std::memset(out, 0, static_cast<size_t>(tc));
    const int64_t r_end = std::min(rows, (i + 1) * bm);
    for (int64_t r = i * bm; r < r_end; ++r) {
      const uint8_t* src = mask + r * cols;
      for (int64_t j = 0; j < tc; ++j) {
        if (out[j]) continue;
        const int64_t c_end = std::min(cols, (j + 1) * bn);
        uint8_t any = 0;
        for (int64_t c = j * bn; c < c_end; ++c) any |= src[c];
        out[j] = any != 0;
      }
    }
  }
}

}  // namespace cpu
}  // namespace lth
