// Llama's MLP activation on the stacked gate and up projections, `silu(gate) * up`, in one operator instead of
// three, rounded as transformers computes it (the activation rounded to the model's dtype, then the product).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "vector.h"

namespace rpserve {
namespace {

template <typename T>
void activate_rows(const T* stacked, int64_t rows, int64_t width, T* output) {
  const int64_t grain = std::max<int64_t>(1, 32768 / width);
  at::parallel_for(0, rows, grain, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const T* gate = stacked + row * 2 * width;
      const T* up = gate + width;
      T* out = output + row * width;
      for (int64_t i = 0; i < width; i += 8) {
        const v8 g = load8(gate + i);
        store8(out + i, round8<T>(g / (1.f + fast_exp8(-g))) * load8(up + i));
      }
    }
  });
}

// stacked [..., 2 * width]: the gate projection's outputs, then the up projection's. Returns [..., width].
at::Tensor silu_mul(const at::Tensor& stacked) {
  TORCH_CHECK(stacked.is_contiguous() && stacked.size(-1) % 16 == 0, "contiguous, a last dimension of 16k");
  const int64_t width = stacked.size(-1) / 2, rows = stacked.numel() / stacked.size(-1);
  auto sizes = stacked.sizes().vec();
  sizes.back() = width;
  at::Tensor output = at::empty(sizes, stacked.options());
  if (stacked.scalar_type() == at::kFloat) {
    activate_rows(stacked.const_data_ptr<float>(), rows, width, output.mutable_data_ptr<float>());
  } else {
    TORCH_CHECK(stacked.scalar_type() == at::kBFloat16, "float32 or bfloat16, not ", stacked.scalar_type());
    activate_rows(stacked.const_data_ptr<c10::BFloat16>(), rows, width, output.mutable_data_ptr<c10::BFloat16>());
  }
  return output;
}

}  // namespace
}  // namespace rpserve

TORCH_LIBRARY_IMPL(rpserve_cpu, CPU, m) { m.impl("silu_mul", &rpserve::silu_mul); }
