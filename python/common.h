// Shared glue for the binding layer: argument checks with messages that name the argument and show
// the value, and the current CUDA stream. Kernels in csrc/ never see a Tensor.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#ifdef LTH_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#define LTH_CHECK_ARG(cond, name, ...) TORCH_CHECK(cond, "lth_kernels: ", name, ": ", __VA_ARGS__)

namespace lth {

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType want) {
  LTH_CHECK_ARG(t.scalar_type() == want, name, "expected dtype ", want, ", got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  LTH_CHECK_ARG(t.dim() == dim, name, "expected ", dim, " dims, got shape ", t.sizes());
}

// Rows x cols view of a tensor whose last dim is `cols` (a 0-dim tensor is not accepted).
inline int64_t leading_rows(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.numel() / std::max<int64_t>(t.size(-1), 1); }

#ifdef LTH_WITH_CUDA
inline cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }
#endif

}  // namespace lth
