// The CPU sparse linear entry of python/cpu_sparse.cpp, for the direct Python binding in module.cpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace lth {

at::Tensor cpu_sparse_linear_impl(const at::Tensor& x, const at::Tensor& blob, int64_t in_features,
                                  int64_t out_features, const std::optional<at::Tensor>& bias);

}  // namespace lth
