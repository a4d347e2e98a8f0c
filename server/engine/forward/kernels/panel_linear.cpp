// A linear layer's product on weights laid out as panels of 16 output columns, [out / 16, in, 16], on the register
// tiles of tile.h. At one to a few rows (a decode step) the panels stream from memory in order, which is what
// bounds such a product; with many rows (a prompt chunk) rows come in groups of 48, whose tiles reuse the panel
// while it is in cache. A row's result does not depend on the rows beside it.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "tile.h"

namespace rpserve {
namespace {

constexpr int64_t kRowGroup = 48;  // rows whose tiles share a panel while it is in cache

template <typename T>
void panel_product(const T* x, int64_t rows, int64_t in, const T* panels, int64_t out, T* y) {
  const int64_t count = out / kPanel;
  for (int64_t first_row = 0; first_row < rows; first_row += kRowGroup) {
    const int64_t group = std::min(kRowGroup, rows - first_row);
    at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
      for (int64_t panel = first; panel < last; ++panel) {
        rows_times_panel<false>(x + first_row * in, group, in, in, panels + panel * in * kPanel, kPanel,
                                y + first_row * out + panel * kPanel, out);
      }
    });
  }
}

// input [..., in], panels [out / 16, in, 16] of the same dtype. Returns [..., out].
at::Tensor panel_linear(const at::Tensor& input, const at::Tensor& panels) {
  TORCH_CHECK(input.is_contiguous() && panels.is_contiguous(), "contiguous input and panels");
  TORCH_CHECK(panels.dim() == 3 && panels.size(2) == kPanel, "panels of 16 columns, [out / 16, in, 16]");
  TORCH_CHECK(input.size(-1) == panels.size(1), "input width ", input.size(-1), " against ", panels.size(1));
  TORCH_CHECK(input.scalar_type() == panels.scalar_type(), "input and panels of one dtype");
  const int64_t in = panels.size(1), out = panels.size(0) * kPanel, rows = input.numel() / in;
  auto sizes = input.sizes().vec();
  sizes.back() = out;
  at::Tensor output = at::empty(sizes, input.options());
  if (input.scalar_type() == at::kFloat) {
    panel_product(input.const_data_ptr<float>(), rows, in, panels.const_data_ptr<float>(), out,
                  output.mutable_data_ptr<float>());
  } else {
    TORCH_CHECK(input.scalar_type() == at::kBFloat16, "float32 or bfloat16, not ", input.scalar_type());
    panel_product(input.const_data_ptr<c10::BFloat16>(), rows, in, panels.const_data_ptr<c10::BFloat16>(), out,
                  output.mutable_data_ptr<c10::BFloat16>());
  }
  return output;
}

}  // namespace
}  // namespace rpserve

TORCH_LIBRARY_IMPL(rpserve_cpu, CPU, m) { m.impl("panel_linear", &rpserve::panel_linear); }
