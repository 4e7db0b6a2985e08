// Binding of csrc/cpu/cpu_sparse: lth_kernels_C::csr_from_dense / cpu_sparse_linear (CPU only, fp32).
// The public API (SparseWeight, cpu_sparse_linear, the dispatch table) lives in lth_kernels/ops/cpu_sparse.py.
#include <ATen/Parallel.h>

#include "common.h"

#include "../csrc/cpu/cpu_sparse.h"

namespace lth {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  LTH_CHECK_ARG(t.device().is_cpu(), name, "expected a CPU tensor, got device ", t.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_from_dense_impl(const at::Tensor& weight_in,
                                                                   const at::Tensor& mask_in) {
  check_cpu(weight_in, "weight");
  check_cpu(mask_in, "mask");
  check_dtype(weight_in, "weight", at::kFloat);
  check_dtype(mask_in, "mask", at::kBool);
  check_dim(weight_in, "weight", 2);
  LTH_CHECK_ARG(mask_in.sizes() == weight_in.sizes(), "mask", "expected the weight's shape ", weight_in.sizes(),
                ", got ", mask_in.sizes());
  const at::Tensor weight = weight_in.contiguous(), mask = mask_in.contiguous();
  const int64_t n = weight.size(0), k = weight.size(1);
  LTH_CHECK_ARG(k <= INT32_MAX, "weight", "in_features must fit int32 column indices, got ", k);
  const auto opts = weight.options();
  at::Tensor row_ptr = at::empty({n + 1}, opts.dtype(at::kLong));
  const auto* m = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  const int threads = at::get_num_threads();
  const int64_t nnz = cpu::csr_row_ptr(m, n, k, row_ptr.data_ptr<int64_t>(), threads);
  at::Tensor col_idx = at::empty({nnz}, opts.dtype(at::kInt));
  at::Tensor values = at::empty({nnz}, opts);
  cpu::csr_fill(weight.data_ptr<float>(), m, n, k, row_ptr.data_ptr<int64_t>(), col_idx.data_ptr<int32_t>(),
                values.data_ptr<float>(), threads);
  return {row_ptr, col_idx, values};
}

at::Tensor cpu_sparse_linear_impl(const at::Tensor& x_in, const at::Tensor& row_ptr_in, const at::Tensor& col_idx_in,
                                  const at::Tensor& values_in, int64_t in_features, int64_t out_features,
                                  const std::optional<at::Tensor>& bias_in) {
  check_cpu(x_in, "x");
  check_dtype(x_in, "x", at::kFloat);
  check_dtype(row_ptr_in, "row_ptr", at::kLong);
  check_dtype(col_idx_in, "col_idx", at::kInt);
  check_dtype(values_in, "values", at::kFloat);
  LTH_CHECK_ARG(x_in.dim() >= 1 && x_in.size(-1) == in_features, "x", "expected shape (..., ", in_features,
                "), got ", x_in.sizes());
  LTH_CHECK_ARG(row_ptr_in.dim() == 1 && row_ptr_in.numel() == out_features + 1, "row_ptr",
                "expected ", out_features + 1, " entries, got shape ", row_ptr_in.sizes());
  LTH_CHECK_ARG(col_idx_in.dim() == 1 && values_in.dim() == 1 && col_idx_in.numel() == values_in.numel(), "values",
                "expected 1-D col_idx and values of one length, got ", col_idx_in.sizes(), " and ",
                values_in.sizes());
  const at::Tensor row_ptr = row_ptr_in.contiguous(), col_idx = col_idx_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t nnz = values.numel();
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  LTH_CHECK_ARG(rp[0] == 0 && rp[out_features] == nnz, "row_ptr", "must run from 0 to nnz=", nnz, ", got ", rp[0],
                "..", rp[out_features]);
  const float* bias_ptr = nullptr;
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    check_cpu(*bias_in, "bias");
    check_dtype(*bias_in, "bias", at::kFloat);
    LTH_CHECK_ARG(bias_in->dim() == 1 && bias_in->numel() == out_features, "bias", "expected shape (",
                  out_features, "), got ", bias_in->sizes());
    bias = bias_in->contiguous();
    bias_ptr = bias.data_ptr<float>();
  }
  // The kernel takes rows with a stride and contiguous columns: reshape keeps most views without a copy.
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x_in.dim(); ++d) rows *= x_in.size(d);  // not numel / K: K may be 0
  at::Tensor x = x_in.reshape({rows, in_features});
  if (x.stride(-1) != 1 || (x.size(0) > 1 && x.stride(0) < in_features)) x = x.contiguous();
  const int64_t batch = x.size(0);
  auto out_shape = x_in.sizes().vec();
  out_shape.back() = out_features;
  at::Tensor y = at::empty(out_shape, x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (batch == 0 || out_features == 0) return y;
  if (in_features == 0) return bias_ptr ? y.copy_(bias.expand_as(y)) : y.zero_();
  cpu::csr_linear(x.data_ptr<float>(), x.size(0) > 1 ? x.stride(0) : in_features, batch, in_features,
                  row_ptr.data_ptr<int64_t>(), col_idx.data_ptr<int32_t>(), values.data_ptr<float>(), out_features,
                  bias_ptr, y.data_ptr<float>(), at::get_num_threads());
  return y;
}

std::string cpu_sparse_isa_impl() { return cpu::csr_linear_isa(); }

}  // namespace
}  // namespace lth

TORCH_LIBRARY_FRAGMENT(lth_kernels_C, m) {
  m.def("csr_from_dense(Tensor weight, Tensor mask) -> (Tensor, Tensor, Tensor)");
  m.def("cpu_sparse_linear(Tensor x, Tensor row_ptr, Tensor col_idx, Tensor values, int in_features, "
        "int out_features, Tensor? bias) -> Tensor");
  m.def("cpu_sparse_isa() -> str", &lth::cpu_sparse_isa_impl);
}

TORCH_LIBRARY_IMPL(lth_kernels_C, CPU, m) {
  m.impl("csr_from_dense", &lth::csr_from_dense_impl);
  m.impl("cpu_sparse_linear", &lth::cpu_sparse_linear_impl);
}
