// The x86 SIMD slice kernels of cpu_sparse (see cpu_sparse_kernels.h): AVX2 + FMA everywhere it runs, AVX-512F
// for the packed path where the CPU has it. Each function carries its target attribute, so the file builds without
// -mavx2 and the table is only handed out after the CPU has been asked.
#include "cpu_sparse_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace lth {
namespace cpu {
namespace detail {
namespace {

// LTH_KERNELS_CPU_ISA (read once per process): generic, avx2 or avx512 forces a path (how the tests reach each).
std::string_view isa_env() {
  static const char* const isa = std::getenv("LTH_KERNELS_CPU_ISA");
  return isa ? isa : "";
}

bool has_avx2() {
  static const bool v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && isa_env() != "generic";
  return v;
}

// The CPU has AVX-512F (16 batch rows per vector, 32 registers) and LTH_KERNELS_CPU_ISA does not say avx2.
bool has_avx512() {
  static const bool v = has_avx2() && __builtin_cpu_supports("avx512f") && isa_env() != "avx2";
  return v;
}

// Three ways to fetch a column's 8 x values on AVX2, each the fastest on some core (768 x 768 at 90 %, B = 1,
// ns per entry): one vgatherdps (Intel Xeon, Golden Cove class: 0.23; AMD Zen 4: 0.38, a gather costing more
// than its 8 loads there), 8 broadcast loads merged by blends (Intel 0.27), and 8 scalar loads that the compiler
// merges by inserts (Intel 0.28, Zen 4 0.24). lanes_variant() (below) times them once per process.
enum Fetch { kGather, kBlend, kInsert, kFetches };
constexpr const char* kFetchNames[kFetches] = {"gather", "blend", "insert"};

// Broadcasts are load-unit work only; blends run on any vector ALU port (inserts only on the shuffle ports).
__attribute__((target("avx2"), always_inline)) inline __m256 blend8(const float* x, const int64_t* j) {
  const __m256 b01 = _mm256_blend_ps(_mm256_broadcast_ss(x + j[0]), _mm256_broadcast_ss(x + j[1]), 0x02);
  const __m256 b23 = _mm256_blend_ps(_mm256_broadcast_ss(x + j[2]), _mm256_broadcast_ss(x + j[3]), 0x08);
  const __m256 b45 = _mm256_blend_ps(_mm256_broadcast_ss(x + j[4]), _mm256_broadcast_ss(x + j[5]), 0x20);
  const __m256 b67 = _mm256_blend_ps(_mm256_broadcast_ss(x + j[6]), _mm256_broadcast_ss(x + j[7]), 0x80);
  return _mm256_blend_ps(_mm256_blend_ps(b01, b23, 0x0C), _mm256_blend_ps(b45, b67, 0xC0), 0xF0);
}

// A column's 8 indices as 32-bit lanes for vgatherdps.
__attribute__((target("avx2"), always_inline)) inline __m256i col_lanes(const uint16_t* p) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx2"), always_inline)) inline __m256i col_lanes(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

template <typename I, int NB, int F>
__attribute__((target("avx2,fma"))) void lanes_avx2(const float* x, int64_t ldx, const uint8_t* d, int64_t len,
                                                    float (*out)[S]) {
  if constexpr (F == kInsert) {
    lanes_body<I, NB, true>(x, ldx, d, len, out);
  } else {
    __m256 a[NB];
    for (int b = 0; b < NB; ++b) a[b] = _mm256_setzero_ps();
    for (int64_t c = 0; c < len; ++c) {
      __builtin_prefetch(Col<I>::idx(d, c) + kPrefetchBytes / sizeof(I));
      const __m256 v = _mm256_loadu_ps(Col<I>::val(d, c));
      if constexpr (F == kGather) {
        const __m256i j = col_lanes(Col<I>::idx(d, c));
        for (int b = 0; b < NB; ++b) a[b] = _mm256_fmadd_ps(v, _mm256_i32gather_ps(x + b * ldx, j, 4), a[b]);
      } else {
        int64_t j[S];
        load_cols(Col<I>::idx(d, c), j);
        for (int b = 0; b < NB; ++b) a[b] = _mm256_fmadd_ps(v, blend8(x + b * ldx, j), a[b]);
      }
    }
    for (int b = 0; b < NB; ++b) _mm256_storeu_ps(out[b], a[b]);
  }
}

// R rows of the slice at once, V vectors (8V batch rows) each: R * V <= 8 accumulators, R independent rows
// to overlap (a slice's rows share one trip count, so there is no per-row branch to mispredict).
template <typename I, int V, int R>
__attribute__((target("avx2,fma"))) void rows_avx2(const float* xt, int64_t bp, const uint8_t* d, int r0,
                                                   int64_t len, float* tile) {
  __m256 acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int64_t c = 0; c < len; ++c) {
    // All 8 rows at once: indices unpacked from 64-bit loads (ALU work for the load ports: 8 % faster at B = 8);
    // fewer rows per pass would unpack all 8 each time (slower).
    const I* ip = Col<I>::idx(d, c);
    int64_t ix[S];
    if constexpr (R == S) load_cols(ip, ix);
    const float* vl = Col<I>::val(d, c) + r0;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_broadcast_ss(vl + r);
      const float* xr = xt + (R == S ? ix[r] : static_cast<int64_t>(ip[r0 + r])) * (8 * V);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + 8 * v), acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(tile + (r0 + r) * bp + 8 * v, acc[r][v]);
}

constexpr int rows_for(int v) { return v == 2 ? 4 : 8; }

template <typename I, int V>
void packed_avx2(const float* xt, int64_t bp, const uint8_t* d, int64_t len, float* tile) {
  constexpr int R = rows_for(V);
  for (int r0 = 0; r0 < S; r0 += R) rows_avx2<I, V, R>(xt, bp, d, r0, len, tile);
}

// AVX-512: all 8 rows of the slice at once over 16 V batch rows (8 V of the 32 registers): per entry one
// broadcast and V loads and FMAs of 16 lanes, against the AVX2 kernel's broadcast per 8 lanes (768 x 768 at 90 %,
// B = 64, Intel Xeon: see bench/results).
template <typename I, int V>
__attribute__((target("avx512f"))) void packed_avx512(const float* xt, int64_t bp, const uint8_t* d, int64_t len,
                                                      float* tile) {
  __m512 acc[S][V];
#pragma GCC unroll 8
  for (int r = 0; r < S; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t c = 0; c < len; ++c) {
    int64_t ix[S];
    load_cols(Col<I>::idx(d, c), ix);
    const float* vl = Col<I>::val(d, c);
#pragma GCC unroll 8
    for (int r = 0; r < S; ++r) {
      const __m512 w = _mm512_set1_ps(vl[r]);
      const float* xr = xt + ix[r] * (16 * V);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xr + 16 * v), acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < S; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(tile + r * bp + 16 * v, acc[r][v]);
}

// In place: v[p][q] <- v[q][p].
__attribute__((target("avx2"), always_inline)) inline void transpose8(__m256* v) {
  const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
  const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
  const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
  const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  v[0] = _mm256_permute2f128_ps(u0, u4, 0x20), v[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  v[2] = _mm256_permute2f128_ps(u2, u6, 0x20), v[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  v[4] = _mm256_permute2f128_ps(u0, u4, 0x31), v[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  v[6] = _mm256_permute2f128_ps(u2, u6, 0x31), v[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// 8 x 8 register transposes where the block is whole, the generic copy at the edges. Destination rows outer: each
// gets its whole span written before the next (the rows of Y can lie a multiple of 4 KiB apart, N = 3072, all in
// one L1 set: half-written lines were evicted and re-read, which made this 95 of 181 us at B = 64, 99 %).
__attribute__((target("avx2"))) void transpose_avx2(const float* src, int64_t lds, int64_t rows, int64_t cols,
                                                    const float* add, float* dst, int64_t ldd) {
  int64_t c0 = 0;
  for (; c0 + 8 <= cols; c0 += 8) {
    int64_t r0 = 0;
    for (; r0 + 8 <= rows; r0 += 8) {
      __m256 v[8];
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) v[q] = _mm256_loadu_ps(src + (r0 + q) * lds + c0);
      transpose8(v);
      const __m256 a = add ? _mm256_loadu_ps(add + r0) : _mm256_setzero_ps();
#pragma GCC unroll 8
      for (int p = 0; p < 8; ++p) _mm256_storeu_ps(dst + (c0 + p) * ldd + r0, add ? _mm256_add_ps(v[p], a) : v[p]);
    }
    transpose_generic(src + r0 * lds + c0, lds, rows - r0, 8, add ? add + r0 : nullptr, dst + c0 * ldd + r0, ldd);
  }
  transpose_generic(src + c0, lds, rows, cols - c0, add, dst + c0 * ldd, ldd);
}
// ------------------------------------------------------------------------------------------ one-time choices
// Buffers for the timings below, 64-byte aligned as the kernel's real operands are (a tensor's storage, the pack
// buffer): at malloc's 16-byte alignment the AVX-512 loads straddle lines and that kernel timed 1.8x slower in
// some processes.
struct Synthetic {
  std::vector<uint8_t> raw;
  uint8_t* p;
  explicit Synthetic(size_t bytes) : raw(bytes + 64) {
    p = raw.data() + (64 - reinterpret_cast<uintptr_t>(raw.data()) % 64) % 64;
  }
  float* floats(float v, size_t count) {
    float* f = reinterpret_cast<float*>(p);
    std::fill(f, f + count, v);
    return f;
  }
};

// `cols` columns of random uint16 indices below kx, values 0.5.
Synthetic synthetic_columns(int64_t cols, int64_t kx) {
  Synthetic d(static_cast<size_t>(cols * Col<uint16_t>::kBytes + kPrefetchBytes));
  uint32_t r = 12345;
  for (int64_t c = 0; c < cols; ++c)
    for (int l = 0; l < S; ++l) {
      r = r * 1664525u + 1013904223u;
      const uint16_t i = static_cast<uint16_t>((r >> 8) % kx);
      const float v = 0.5f;
      std::memcpy(d.p + c * Col<uint16_t>::kBytes + l * 2, &i, 2);
      std::memcpy(d.p + c * Col<uint16_t>::kBytes + S * 2 + l * 4, &v, 4);
    }
  return d;
}

// Index of the fastest of `n` candidates, run(i) running candidate i once: best of 9 interleaved runs, after 2 ms
// of running them all (an Intel core runs its first 512-bit instructions at a fraction of their rate while it
// powers the upper lanes and changes frequency: timed cold, AVX-512 lost in half the processes).
template <typename Run>
int fastest(int n, const Run& run) {
  const auto warm = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - warm < std::chrono::milliseconds(2))
    for (int i = 0; i < n; ++i) run(i);
  std::vector<double> best(static_cast<size_t>(n), 1e30);
  for (int rep = 0; rep < 9; ++rep)
    for (int i = 0; i < n; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      run(i);
      best[i] = std::min(best[i], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  return static_cast<int>(std::min_element(best.begin(), best.end()) - best.begin());
}

// The fetch this core runs fastest, timed once per process over 512 synthetic columns indexing 1,024 x values
// (all in L1). LTH_KERNELS_CPU_LANES=gather, blend or insert forces one (how the tests check each).
int lanes_variant() {
  static const int chosen = [] {
    const char* env = std::getenv("LTH_KERNELS_CPU_LANES");
    for (int f = 0; f < kFetches; ++f)
      if (env && std::string_view(env) == kFetchNames[f]) return f;
    constexpr int64_t cols = 512, kx = 1024;
    const Synthetic d = synthetic_columns(cols, kx);
    Synthetic xs(sizeof(float) * kx);
    const float* x = xs.floats(1.f, kx);
    const LanesFn fns[kFetches] = {lanes_avx2<uint16_t, 1, kGather>, lanes_avx2<uint16_t, 1, kBlend>,
                                   lanes_avx2<uint16_t, 1, kInsert>};
    float out[kLanesMaxBatch][S];
    return fastest(kFetches, [&](int f) { fns[f](x, kx, d.p, cols, out); });
  }();
  return chosen;
}

// Whether the AVX-512 packed kernel is taken: where the CPU has it and, timed once per process, one block of 32
// batch rows runs faster than two AVX2 blocks of 16 (it does by 1.15-1.36x on an Intel Xeon, Golden Cove class; a
// core that splits 512-bit operations may gain less). LTH_KERNELS_CPU_ISA=avx512 takes it untimed.
bool use_avx512() {
  static const bool chosen = [] {
    if (!has_avx512()) return false;
    if (isa_env() == "avx512") return true;
    constexpr int64_t cols = 256, kx = 512;
    const Synthetic d = synthetic_columns(cols, kx);
    Synthetic panel(sizeof(float) * kx * 32);
    const float* xt = panel.floats(1.f, kx * 32);
    alignas(64) float tile[S * 32];
    return fastest(2, [&](int wide) {
             if (wide) {
               packed_avx512<uint16_t, 2>(xt, 32, d.p, cols, tile);
             } else {
               packed_avx2<uint16_t, 2>(xt, 16, d.p, cols, tile);
               packed_avx2<uint16_t, 2>(xt + kx * 16, 16, d.p, cols, tile);
             }
           }) == 1;
  }();
  return chosen;
}

}  // namespace

template <typename I>
const Kernels<I>* x86_kernels() {
#define LTH_X86_KERNELS(F, P, WIDE, MAXB)                                                                        \
  {{nullptr, lanes_avx2<I, 1, F>, lanes_avx2<I, 2, F>}, P, transpose_avx2, WIDE, MAXB}
#define LTH_AVX2_PACKED {nullptr, packed_avx2<I, 1>, packed_avx2<I, 2>}
#define LTH_AVX512_PACKED {nullptr, packed_avx2<I, 1>, packed_avx512<I, 1>, nullptr, packed_avx512<I, 2>}
  static const Kernels<I> avx2[kFetches] = {LTH_X86_KERNELS(kGather, LTH_AVX2_PACKED, 8, kMaxBlock),
                                            LTH_X86_KERNELS(kBlend, LTH_AVX2_PACKED, 8, kMaxBlock),
                                            LTH_X86_KERNELS(kInsert, LTH_AVX2_PACKED, 8, kMaxBlock)};
  static const Kernels<I> avx512[kFetches] = {LTH_X86_KERNELS(kGather, LTH_AVX512_PACKED, 16, kMaxBlock512),
                                              LTH_X86_KERNELS(kBlend, LTH_AVX512_PACKED, 16, kMaxBlock512),
                                              LTH_X86_KERNELS(kInsert, LTH_AVX512_PACKED, 16, kMaxBlock512)};
#undef LTH_X86_KERNELS
#undef LTH_AVX2_PACKED
#undef LTH_AVX512_PACKED
  if (use_avx512()) return &avx512[lanes_variant()];
  if (has_avx2()) return &avx2[lanes_variant()];
  return nullptr;
}

const char* x86_isa() {
  static const std::string isa = std::string(use_avx512() ? "avx512+" : "avx2+") + kFetchNames[lanes_variant()];
  return isa.c_str();
}

template const Kernels<uint16_t>* x86_kernels<uint16_t>();
template const Kernels<int32_t>* x86_kernels<int32_t>();

}  // namespace detail
}  // namespace cpu
}  // namespace lth

#else  // not x86: the portable kernels only

namespace lth {
namespace cpu {
namespace detail {
template <typename I>
const Kernels<I>* x86_kernels() {
  return nullptr;
}
const char* x86_isa() { return "generic"; }
template const Kernels<uint16_t>* x86_kernels<uint16_t>();
template const Kernels<int32_t>* x86_kernels<int32_t>();
}  // namespace detail
}  // namespace cpu
}  // namespace lth

#endif
