// Mask metadata on the CPU: bit packing and tile occupancy of boolean weight masks.
// Raw pointers and sizes only (no ATen): the binding layer in python/ owns checks and allocation.
#pragma once
#include <cstdint>

namespace lth {
namespace cpu {

// Packs `rows` x `cols` bytes (0/1, row-major) into rows x ceil(cols/32) int32 words;
// bit j of word w of a row holds column 32*w + j. Padding bits are 0.
void pack_mask(const uint8_t* mask, int64_t rows, int64_t cols, int32_t* packed);

// Inverse of pack_mask for the first `cols` columns.
void unpack_mask(const int32_t* packed, int64_t rows, int64_t cols, uint8_t* mask);

// occupancy[i, j] = 1 iff any mask entry in rows [i*bm, (i+1)*bm) x cols [j*bn, (j+1)*bn) is kept.
void tile_occupancy(const uint8_t* mask, int64_t rows, int64_t cols, int64_t bm, int64_t bn,
                    uint8_t* occupancy);

}  // namespace cpu
}  // namespace lth
