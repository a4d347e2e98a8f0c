// Llama's RMSNorm in one operator (transformers' module is seven: the cast, square, mean, add, rsqrt and two
// products), rounded as that module rounds: normalised in float32, cast to the model's dtype, then scaled by the
// weight in that dtype.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "vector.h"

namespace rpserve {
namespace {

template <typename T>
void normalise_rows(const T* input, const T* weight, int64_t rows, int64_t width, double eps, T* output) {
  // Enough rows per task that a thread's start costs less than its work.
  const int64_t grain = std::max<int64_t>(1, 32768 / width);
  at::parallel_for(0, rows, grain, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const T* x = input + row * width;
      T* out = output + row * width;
      float squares = 0.f;
#pragma omp simd reduction(+ : squares)
      for (int64_t i = 0; i < width; ++i) squares += static_cast<float>(x[i]) * static_cast<float>(x[i]);
      const float inverse = 1.f / std::sqrt(squares / width + static_cast<float>(eps));
      for (int64_t i = 0; i < width; ++i) {
        out[i] = T(static_cast<float>(weight[i]) * static_cast<float>(T(static_cast<float>(x[i]) * inverse)));
      }
    }
  });
}

at::Tensor rms_norm(const at::Tensor& input, const at::Tensor& weight, double eps) {
  TORCH_CHECK(input.is_contiguous() && weight.is_contiguous(), "contiguous input and weight");
  const int64_t width = input.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == width, "one weight per feature");
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "the weight in the input's dtype");
  at::Tensor output = at::empty_like(input);
  const int64_t rows = input.numel() / width;
  if (input.scalar_type() == at::kFloat) {
    normalise_rows(input.const_data_ptr<float>(), weight.const_data_ptr<float>(), rows, width, eps,
                   output.mutable_data_ptr<float>());
  } else {
    TORCH_CHECK(input.scalar_type() == at::kBFloat16, "float32 or bfloat16, not ", input.scalar_type());
    normalise_rows(input.const_data_ptr<c10::BFloat16>(), weight.const_data_ptr<c10::BFloat16>(), rows, width, eps,
                   output.mutable_data_ptr<c10::BFloat16>());
  }
  return output;
}

}  // namespace
}  // namespace rpserve

TORCH_LIBRARY_IMPL(rpserve_cpu, CPU, m) { m.impl("rms_norm", &rpserve::rms_norm); }
