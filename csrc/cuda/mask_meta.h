// Mask metadata on the GPU (see csrc/cpu/mask_meta.h for the layout). Launchers take the stream
// explicitly so this header needs nothing but the CUDA runtime.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace lth {
namespace cuda {

void pack_mask(const uint8_t* mask, int64_t rows, int64_t cols, int32_t* packed, cudaStream_t stream);
void unpack_mask(const int32_t* packed, int64_t rows, int64_t cols, uint8_t* mask, cudaStream_t stream);
void tile_occupancy(const uint8_t* mask, int64_t rows, int64_t cols, int64_t bm, int64_t bn,
                    uint8_t* occupancy, cudaStream_t stream);

}  // namespace cuda
}  // namespace lth
