// Internal to the CPU sparse kernel (csrc/cpu/cpu_sparse*.cpp): the SELL column access, the slice-kernel
// signatures and the table of kernels one instruction set provides. The portable kernels and the drivers are in
// cpu_sparse.cpp, the x86 SIMD ones (AVX2, AVX-512) in cpu_sparse_x86.cpp.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu_sparse.h"

namespace lth {
namespace cpu {
namespace detail {

constexpr int64_t S = kSliceRows;
// Batches up to this size read X per entry (each column's 8 x values fetched into one vector, one FMA per
// column and batch row); larger ones pack X transposed so that each entry does one broadcast and vector FMAs
// over 8-16 batch rows. Measured on AMD Zen 4: packing wins from B = 3.
constexpr int64_t kLanesMaxBatch = 2;
// Batch rows per packed block at most, and the L2 share of one packed K x block panel. AVX2: 16 rows (one cache
// line of the panel per entry, 4 slice rows in flight) against 64 (4 lines, 1 row), B = 64 on an Intel Xeon (Golden
// Cove class), aligned panels: 1.1-1.3x faster at K = 384-768, within 5 % at K = 1536-3072. A panel that spills to
// L3 leaves each entry waiting on an L3 round trip (measured: 1.6x at K = 3072, B = 64 with a 512 KiB L2).
constexpr int64_t kMaxBlock = 16;
// With AVX-512 (16 lanes a vector): 32 rows, two vectors per slice row, 0-8 % faster than 16 there.
constexpr int64_t kMaxBlock512 = 32;
constexpr int64_t kMaxPanel = 32;
constexpr int64_t kPanelBytes = 256 << 10;
// The lanes loop reads its column stream this far ahead: the stream comes from L3 when the layer before evicted
// it, and the hardware prefetcher alone left 16.3 us instead of 13.7 at 768 x 768, 90 %, B = 1 (Intel Xeon).
constexpr int64_t kPrefetchBytes = 2048;

// A column of the buffer: 8 indices, then 8 values.
template <typename I>
struct Col {
  static constexpr int64_t kBytes = sell_column_bytes<I>();
  static const I* idx(const uint8_t* d, int64_t c) { return reinterpret_cast<const I*>(d + c * kBytes); }
  static const float* val(const uint8_t* d, int64_t c) {
    return reinterpret_cast<const float*>(d + c * kBytes + S * sizeof(I));
  }
};

// The 8 column indices of a column; uint16 ones as two 64-bit loads and shifts (ALU work instead of 8 loads,
// the load ports being what bounds this loop).
inline void load_cols(const uint16_t* p, int64_t* j) {
  uint64_t w[2];
  std::memcpy(w, p, sizeof(w));
  for (int h = 0; h < 2; ++h)
    for (int q = 0; q < 4; ++q) j[4 * h + q] = static_cast<int64_t>((w[h] >> (16 * q)) & 0xffff);
}
inline void load_cols(const int32_t* p, int64_t* j) {
  for (int l = 0; l < S; ++l) j[l] = p[l];
}

// ------------------------------------------------------------------------------------------ slice kernels
// Lanes: out[b][l] = sum_c val[c][l] * x[b * ldx + idx[c][l]] for NB batch rows (8 NB independent sums).
using LanesFn = void (*)(const float*, int64_t, const uint8_t*, int64_t, float (*)[S]);
// Packed: tile[l * bp + j] = sum_c val[c][l] * xt[idx[c][l] * bp + j] for j < bp (each kernel one bp).
using PackedFn = void (*)(const float*, int64_t, const uint8_t*, int64_t, float*);
// dst[c * ldd + r] = src[r * lds + c] (+ add[r] where add is given) for r < rows, c < cols: packs X (the panel
// xt[kk * bp + j] = x[j * ldx + kk]) and puts a window's tiles back into Y (y[i * n + t] = tile[t * bp + i] + bias).
using TransposeFn = void (*)(const float* src, int64_t lds, int64_t rows, int64_t cols, const float* add, float* dst,
                             int64_t ldd);

template <typename I>
struct Kernels {
  LanesFn lanes[kLanesMaxBatch + 1];   // by batch rows 1..kLanesMaxBatch
  PackedFn packed[kMaxPanel / 8 + 1];  // by panel rows / 8 (the panel rows each kernel takes, else null)
  TransposeFn transpose;
  int64_t wide;       // panel rows are 8, or a multiple of this
  int64_t max_block;  // batch rows per packed block at most
  // Panel rows (bp) for a block of bb batch rows: the zero rows a kernel's vector width needs added.
  int64_t panel_rows(int64_t bb) const { return bb <= 8 ? 8 : (bb + wide - 1) / wide * wide; }
};

// One body for both instruction sets: inlined into a target("avx2,fma") caller, __builtin_fmaf becomes one
// vfmadd231ss; the generic build multiplies and adds.
template <typename I, int NB, bool kFma>
__attribute__((always_inline)) inline void lanes_body(const float* x, int64_t ldx, const uint8_t* d, int64_t len,
                                                      float (*out)[S]) {
  float a[NB][S] = {};
  for (int64_t c = 0; c < len; ++c) {
    __builtin_prefetch(Col<I>::idx(d, c) + kPrefetchBytes / sizeof(I));
    int64_t j[S];
    load_cols(Col<I>::idx(d, c), j);
    const float* v = Col<I>::val(d, c);
#pragma GCC unroll 8
    for (int l = 0; l < S; ++l)
#pragma GCC unroll 2
      for (int b = 0; b < NB; ++b)
        a[b][l] = kFma ? __builtin_fmaf(v[l], x[b * ldx + j[l]], a[b][l]) : a[b][l] + v[l] * x[b * ldx + j[l]];
  }
  std::memcpy(out, a, sizeof(a));
}

inline void transpose_generic(const float* src, int64_t lds, int64_t rows, int64_t cols, const float* add,
                              float* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = add ? src[r * lds + c] + add[r] : src[r * lds + c];
}

// The x86 SIMD table for index type I on this CPU (AVX2 + FMA, with AVX-512F where present, as capped by
// LTH_KERNELS_CPU_ISA), or null: not x86, no AVX2, or LTH_KERNELS_CPU_ISA=generic.
template <typename I>
const Kernels<I>* x86_kernels();
// sell_linear_isa()'s answer when x86_kernels is not null.
const char* x86_isa();

}  // namespace detail
}  // namespace cpu
}  // namespace lth
