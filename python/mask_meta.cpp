// Binding of csrc/*/mask_meta: lth_kernels_C::pack_mask / unpack_mask / tile_occupancy on CPU and CUDA.
// The public ops (lth_kernels::*) with fakes and backend selection live in lth_kernels/ops/mask_meta.py.
#include "common.h"

#include "../csrc/cpu/mask_meta.h"
#ifdef LTH_WITH_CUDA
#include "../csrc/cuda/mask_meta.h"
#endif

namespace lth {
namespace {


at::Tensor pack_mask_impl(const at::Tensor& mask_in) {
  check_dtype(mask_in, "mask", at::kBool);
  LTH_CHECK_ARG(mask_in.dim() >= 1, "mask", "expected at least 1 dim, got shape ", mask_in.sizes());
  const at::Tensor mask = mask_in.contiguous();
  const int64_t cols = mask.size(-1);
  const int64_t rows = leading_rows(mask);
  auto out_shape = mask.sizes().vec();
  out_shape.back() = (cols + 31) / 32;
  at::Tensor packed = at::empty(out_shape, mask.options().dtype(at::kInt));
  const auto* src = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  if (mask.is_cuda()) {
#ifdef LTH_WITH_CUDA
    c10::cuda::CUDAGuard guard(mask.device());
    cuda::pack_mask(src, rows, cols, packed.data_ptr<int32_t>(), stream_of(mask));
    C10_CUDA_KERNEL_LAUNCH_CHECK();  // a bad launch fails here, not at some later sync
#endif
  } else {
    cpu::pack_mask(src, rows, cols, packed.data_ptr<int32_t>());
  }
  return packed;
}

at::Tensor unpack_mask_impl(const at::Tensor& packed_in, int64_t cols) {
  check_dtype(packed_in, "packed", at::kInt);
  LTH_CHECK_ARG(packed_in.dim() >= 1, "packed", "expected at least 1 dim, got shape ", packed_in.sizes());
  LTH_CHECK_ARG(cols >= 0 && (cols + 31) / 32 == packed_in.size(-1), "cols",
                "needs ceil(cols/32) == packed.size(-1) = ", packed_in.size(-1), ", got cols=", cols);
  const at::Tensor packed = packed_in.contiguous();
  const int64_t rows = leading_rows(packed);
  auto out_shape = packed.sizes().vec();
  out_shape.back() = cols;
  at::Tensor mask = at::empty(out_shape, packed.options().dtype(at::kBool));
  auto* dst = reinterpret_cast<uint8_t*>(mask.data_ptr<bool>());
  if (packed.is_cuda()) {
#ifdef LTH_WITH_CUDA
    c10::cuda::CUDAGuard guard(packed.device());
    cuda::unpack_mask(packed.data_ptr<int32_t>(), rows, cols, dst, stream_of(packed));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  } else {
    cpu::unpack_mask(packed.data_ptr<int32_t>(), rows, cols, dst);
  }
  return mask;
}

at::Tensor tile_occupancy_impl(const at::Tensor& mask_in, int64_t bm, int64_t bn) {
  check_dtype(mask_in, "mask", at::kBool);
  check_dim(mask_in, "mask", 2);
  LTH_CHECK_ARG(bm > 0 && bn > 0, "block", "sizes must be positive, got (", bm, ", ", bn, ")");
  const at::Tensor mask = mask_in.contiguous();
  const int64_t rows = mask.size(0), cols = mask.size(1);
  at::Tensor occ = at::empty({(rows + bm - 1) / bm, (cols + bn - 1) / bn}, mask.options());
  const auto* src = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  auto* dst = reinterpret_cast<uint8_t*>(occ.data_ptr<bool>());
  if (mask.is_cuda()) {
#ifdef LTH_WITH_CUDA
    c10::cuda::CUDAGuard guard(mask.device());
    cuda::tile_occupancy(src, rows, cols, bm, bn, dst, stream_of(mask));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
  } else {
    cpu::tile_occupancy(src, rows, cols, bm, bn, dst);
  }
  return occ;
}

}  // namespace
}  // namespace lth

TORCH_LIBRARY_FRAGMENT(lth_kernels_C, m) {
  m.def("pack_mask(Tensor mask) -> Tensor");
  m.def("unpack_mask(Tensor packed, int cols) -> Tensor");
  m.def("tile_occupancy(Tensor mask, int bm, int bn) -> Tensor");
}

TORCH_LIBRARY_IMPL(lth_kernels_C, CPU, m) {
  m.impl("pack_mask", &lth::pack_mask_impl);
  m.impl("unpack_mask", &lth::unpack_mask_impl);
  m.impl("tile_occupancy", &lth::tile_occupancy_impl);
}

#ifdef LTH_WITH_CUDA
TORCH_LIBRARY_IMPL(lth_kernels_C, CUDA, m) {
  m.impl("pack_mask", &lth::pack_mask_impl);
  m.impl("unpack_mask", &lth::unpack_mask_impl);
  m.impl("tile_occupancy", &lth::tile_occupancy_impl);
}
#endif
