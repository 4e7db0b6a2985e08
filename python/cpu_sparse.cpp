// Binding of csrc/cpu/cpu_sparse: lth_kernels_C::csr_from_dense / sell_from_csr / cpu_sparse_linear (CPU, fp32).
// The public API (SparseWeight, cpu_sparse_linear, the dispatch table) lives in lth_kernels/ops/cpu_sparse.py.
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>

#include "common.h"

#include <cstring>
#include <vector>

#include "cpu_sparse.h"
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

// The SELL-8 buffer of a CSR weight (see csrc/cpu/cpu_sparse.h): one uint8 tensor, column indices uint16 when
// in_features <= 65,536, else int32.
at::Tensor sell_from_csr_impl(const at::Tensor& row_ptr_in, const at::Tensor& col_idx_in, const at::Tensor& values_in,
                              int64_t in_features) {
  check_cpu(row_ptr_in, "row_ptr");
  check_cpu(col_idx_in, "col_idx");
  check_cpu(values_in, "values");
  check_dtype(row_ptr_in, "row_ptr", at::kLong);
  check_dtype(col_idx_in, "col_idx", at::kInt);
  check_dtype(values_in, "values", at::kFloat);
  LTH_CHECK_ARG(row_ptr_in.dim() == 1 && row_ptr_in.numel() >= 1, "row_ptr", "expected a 1-D tensor of N + 1 entries, got shape ",
                row_ptr_in.sizes());
  LTH_CHECK_ARG(col_idx_in.dim() == 1 && values_in.dim() == 1 && col_idx_in.numel() == values_in.numel(), "values",
                "expected 1-D col_idx and values of one length, got ", col_idx_in.sizes(), " and ", values_in.sizes());
  LTH_CHECK_ARG(in_features >= 0 && in_features <= INT32_MAX, "in_features", "expected 0..", INT32_MAX, ", got ",
                in_features);
  const at::Tensor row_ptr = row_ptr_in.contiguous(), col_idx = col_idx_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t n = row_ptr.numel() - 1;
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  LTH_CHECK_ARG(rp[0] == 0 && rp[n] == values.numel(), "row_ptr", "must run from 0 to nnz=", values.numel(), ", got ",
                rp[0], "..", rp[n]);
  const int64_t ns = (n + cpu::kSliceRows - 1) / cpu::kSliceRows;
  std::vector<int32_t> perm(static_cast<size_t>(ns * cpu::kSliceRows));
  std::vector<int64_t> slice_ptr(static_cast<size_t>(ns + 1));
  const int64_t columns = cpu::sell_layout(rp, n, perm.data(), slice_ptr.data());
  const bool narrow = in_features <= 65536;
  const int64_t offset = cpu::sell_data_offset(ns);
  const int64_t col_bytes = narrow ? cpu::sell_column_bytes<uint16_t>() : cpu::sell_column_bytes<int32_t>();
  at::Tensor blob = at::zeros({offset + columns * col_bytes}, values.options().dtype(at::kByte));
  uint8_t* d = blob.data_ptr<uint8_t>();
  std::memcpy(d, slice_ptr.data(), sizeof(int64_t) * slice_ptr.size());
  std::memcpy(d + cpu::sell_perm_offset(ns), perm.data(), sizeof(int32_t) * perm.size());
  const int threads = at::get_num_threads();
  if (narrow)
    cpu::sell_fill<uint16_t>(rp, col_idx.data_ptr<int32_t>(), values.data_ptr<float>(), n, perm.data(),
                             slice_ptr.data(), d + offset, threads);
  else
    cpu::sell_fill<int32_t>(rp, col_idx.data_ptr<int32_t>(), values.data_ptr<float>(), n, perm.data(),
                            slice_ptr.data(), d + offset, threads);
  return blob;
}

}  // namespace

// Checks the call (each failure names its argument) and runs the kernel. Also bound directly in the Python
// module (module.cpp): eager callers skip the dispatcher, whose boxing costs more than the kernel on small layers.
at::Tensor cpu_sparse_linear_impl(const at::Tensor& x_in, const at::Tensor& blob_in, int64_t in_features,
                                  int64_t out_features, const std::optional<at::Tensor>& bias_in) {
  check_cpu(x_in, "x");
  check_dtype(x_in, "x", at::kFloat);
  check_cpu(blob_in, "blob");
  check_dtype(blob_in, "blob", at::kByte);
  LTH_CHECK_ARG(x_in.dim() >= 1 && x_in.size(-1) == in_features, "x", "expected shape (..., ", in_features,
                "), got ", x_in.sizes());
  LTH_CHECK_ARG(out_features >= 0, "out_features", "expected >= 0, got ", out_features);
  const bool narrow = in_features <= 65536;
  const int64_t ns = (out_features + cpu::kSliceRows - 1) / cpu::kSliceRows;
  const int64_t offset = cpu::sell_data_offset(ns);
  const int64_t col_bytes = narrow ? cpu::sell_column_bytes<uint16_t>() : cpu::sell_column_bytes<int32_t>();
  LTH_CHECK_ARG(blob_in.dim() == 1 && blob_in.is_contiguous() && blob_in.numel() >= offset, "blob",
                "expected a contiguous 1-D buffer of at least ", offset, " bytes for ", out_features,
                " rows, got shape ", blob_in.sizes());
  const uint8_t* blob = blob_in.data_ptr<uint8_t>();
  const int64_t columns = reinterpret_cast<const int64_t*>(blob)[ns];  // slice_ptr[ns]
  LTH_CHECK_ARG(blob_in.numel() == offset + columns * col_bytes, "blob", "expected ", offset + columns * col_bytes,
                " bytes (", columns, " columns of ", col_bytes, " for in_features=", in_features, "), got ",
                blob_in.numel());
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
  // The kernel takes rows with a stride and contiguous columns: reshape keeps most views without a copy. A 2-D x
  // that already has that layout is taken as it is (a new view costs ~0.3 us, a tenth of this call's overhead).
  const auto rows_ok = [in_features](const at::Tensor& t) {
    return t.stride(-1) == 1 && (t.size(0) <= 1 || t.stride(0) >= in_features);
  };
  at::Tensor x = x_in;
  if (x_in.dim() != 2 || !rows_ok(x_in)) {
    int64_t rows = 1;
    for (int64_t d = 0; d + 1 < x_in.dim(); ++d) rows *= x_in.size(d);  // not numel / K: K may be 0
    x = x_in.reshape({rows, in_features});
    if (!rows_ok(x)) x = x.contiguous();
  }
  const int64_t batch = x.size(0);
  // Allocated without the dispatcher (at::empty): in the interleaved benchmark, where the layer before has evicted
  // the caches, the call at 768 x 768, 90 %, B = 1 took 12.3 us instead of 14.4.
  at::Tensor y;
  if (x_in.dim() == 2) {
    y = at::detail::empty_cpu({batch, out_features}, at::kFloat);
  } else {
    auto out_shape = x_in.sizes().vec();
    out_shape.back() = out_features;
    y = at::detail::empty_cpu(out_shape, at::kFloat);
  }
  if (batch == 0 || out_features == 0) return y;
  if (in_features == 0) return bias_ptr ? y.copy_(bias.expand_as(y)) : y.zero_();
  const int64_t ldx = x.size(0) > 1 ? x.stride(0) : in_features;
  const int threads = at::get_num_threads();
  if (narrow)
    cpu::sell_linear<uint16_t>(x.data_ptr<float>(), ldx, batch, in_features, out_features, blob, bias_ptr,
                               y.data_ptr<float>(), threads);
  else
    cpu::sell_linear<int32_t>(x.data_ptr<float>(), ldx, batch, in_features, out_features, blob, bias_ptr,
                              y.data_ptr<float>(), threads);
  return y;
}

namespace {

std::string cpu_sparse_isa_impl() { return cpu::sell_linear_isa(); }

}  // namespace
}  // namespace lth

TORCH_LIBRARY_FRAGMENT(lth_kernels_C, m) {
  m.def("csr_from_dense(Tensor weight, Tensor mask) -> (Tensor, Tensor, Tensor)");
  m.def("sell_from_csr(Tensor row_ptr, Tensor col_idx, Tensor values, int in_features) -> Tensor");
  m.def("cpu_sparse_linear(Tensor x, Tensor blob, int in_features, int out_features, Tensor? bias) -> Tensor");
  m.def("cpu_sparse_isa() -> str", &lth::cpu_sparse_isa_impl);
}

TORCH_LIBRARY_IMPL(lth_kernels_C, CPU, m) {
  m.impl("csr_from_dense", &lth::csr_from_dense_impl);
  m.impl("sell_from_csr", &lth::sell_from_csr_impl);
  m.impl("cpu_sparse_linear", &lth::cpu_sparse_linear_impl);
}
