// Binding of csrc/cuda/token_gather: lth_kernels_C::gather_tokens / place_tokens on CUDA tensors.
// The public ops (lth_kernels::gather_tokens / place_tokens) with checks, fakes, autograd and backend
// selection live in lth_kernels/ops/token_gather.py; on CPU the torch reference is already a single
// memory-bound gather, so there is no CPU kernel here.
#include "common.h"

#ifdef LTH_WITH_CUDA
#include "../csrc/cuda/token_gather.h"
#endif

namespace lth {
namespace {

#ifdef LTH_WITH_CUDA
void check_rows(const at::Tensor& t, const char* name) {
  check_dim(t, name, 3);
  LTH_CHECK_ARG(t.is_cuda(), name, "expected a CUDA tensor, got device ", t.device());
  LTH_CHECK_ARG(t.stride(2) == 1, name, "expected unit channel stride, got strides ", t.strides());
}

at::Tensor gather_tokens_impl(const at::Tensor& x, const at::Tensor& index) {
  check_rows(x, "x");
  check_dim(index, "index", 2);
  LTH_CHECK_ARG(index.scalar_type() == at::kInt || index.scalar_type() == at::kLong, "index",
                "expected dtype int32 or int64, got ", index.scalar_type());
  LTH_CHECK_ARG(index.size(0) == x.size(0) && index.stride(1) == 1, "index",
                "expected shape (B=", x.size(0), ", K) with unit stride, got ", index.sizes(), " strides ",
                index.strides());
  LTH_CHECK_ARG(index.device() == x.device(), "index", "expected device ", x.device(), ", got ", index.device());
  const int64_t batch = x.size(0), kept = index.size(1), elem = x.element_size();
  at::Tensor out = at::empty({batch, kept, x.size(2)}, x.options());
  c10::cuda::CUDAGuard guard(x.device());
  cuda::gather_tokens(x.data_ptr(), x.stride(0) * elem, x.stride(1) * elem, index.data_ptr(),
                      index.scalar_type() == at::kLong, index.stride(0), out.data_ptr(), batch, kept,
                      x.size(2) * elem, stream_of(x));
  C10_CUDA_KERNEL_LAUNCH_CHECK();  // a bad launch fails here, not at some later sync
  return out;
}

at::Tensor place_tokens_impl(const std::optional<at::Tensor>& base_in, const at::Tensor& inverse,
                             const std::optional<at::Tensor>& src_in, int64_t channels) {
  check_dim(inverse, "inverse", 2);
  check_dtype(inverse, "inverse", at::kInt);
  LTH_CHECK_ARG(inverse.is_cuda(), "inverse", "expected a CUDA tensor, got device ", inverse.device());
  const int64_t batch = inverse.size(0), tokens = inverse.size(1);
  const at::Tensor inv = inverse.contiguous();
  at::Tensor base, src;
  at::ScalarType dtype = at::kFloat;
  if (base_in.has_value()) {
    base = base_in->contiguous();
    check_rows(base, "base");
    LTH_CHECK_ARG(base.size(0) == batch && base.size(1) == tokens && base.size(2) == channels, "base",
                  "expected shape (", batch, ", ", tokens, ", ", channels, "), got ", base.sizes());
    dtype = base.scalar_type();
  }
  int64_t kept = 0;
  if (src_in.has_value()) {
    src = src_in->contiguous();
    check_rows(src, "src");
    LTH_CHECK_ARG(src.size(0) == batch && src.size(2) == channels, "src", "expected shape (", batch, ", K, ",
                  channels, "), got ", src.sizes());
    LTH_CHECK_ARG(!base.defined() || src.scalar_type() == dtype, "src", "expected dtype ", dtype, ", got ",
                  src.scalar_type());
    dtype = src.scalar_type();
    kept = src.size(1);
  }
  LTH_CHECK_ARG(base.defined() || src.defined(), "base", "base and src cannot both be None");
  at::Tensor out = at::empty({batch, tokens, channels}, inverse.options().dtype(dtype));
  c10::cuda::CUDAGuard guard(inverse.device());
  cuda::place_tokens(base.defined() ? base.data_ptr() : nullptr, inv.data_ptr<int32_t>(),
                     src.defined() ? src.data_ptr() : nullptr, out.data_ptr(), batch, tokens, kept,
                     channels * out.element_size(), stream_of(inverse));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}
#endif

}  // namespace
}  // namespace lth

TORCH_LIBRARY_FRAGMENT(lth_kernels_C, m) {
  m.def("gather_tokens(Tensor x, Tensor index) -> Tensor");
  m.def("place_tokens(Tensor? base, Tensor inverse, Tensor? src, int channels) -> Tensor");
}

#ifdef LTH_WITH_CUDA
TORCH_LIBRARY_IMPL(lth_kernels_C, CUDA, m) {
  m.impl("gather_tokens", &lth::gather_tokens_impl);
  m.impl("place_tokens", &lth::place_tokens_impl);
}
#endif
