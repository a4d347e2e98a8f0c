// A linear layer's product on weights laid out as panels of 16 output columns, [out / 16, in, 16]: for each input
// element, the 16 weights it multiplies are one contiguous run. A tile of up to 6 rows times one panel keeps its
// 6 x 16 sums in 12 vector registers while it walks the panel once, each weight loaded once for all the tile's
// rows. At one to a few rows (a decode step) the panels stream from memory in order, which is what bounds such a
// product; with many rows (a prompt chunk) rows come in groups of 48, whose tiles reuse the panel while it is in
// cache. Each output is summed over the inputs in order, whatever the number of rows: a row's result does not
// depend on the rows beside it.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "vector.h"

namespace rpserve {
namespace {

constexpr int64_t kPanel = 16;  // output columns a panel holds: two vectors of eight
constexpr int64_t kTileRows = 6;
constexpr int64_t kRowGroup = 48;  // rows whose tiles share a panel while it is in cache

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// R rows of `x` (`in` apart) times one panel: R x 16 outputs, `out` apart. Its multiply-adds are fused (the
// library is built with -ffp-contract=off for the rotary embedding's sake; here the sums' rounding is ours to choose,
// and fused they run at twice the rate).
template <int R, typename T>
__attribute__((optimize("fp-contract=fast"))) inline void tile(const T* x, int64_t in, const T* panel, T* y,
                                                                int64_t out) {
  v8 sums[R][2] = {};
  for (int64_t k = 0; k < in; ++k) {
    const v8 low = load8(panel + k * kPanel), high = load8(panel + k * kPanel + 8);
    for (int r = 0; r < R; ++r) {
      const float input = to_float(x[r * in + k]);
      sums[r][0] += input * low;
      sums[r][1] += input * high;
    }
  }
  for (int r = 0; r < R; ++r) {
    store8(y + r * out, sums[r][0]);
    store8(y + r * out + 8, sums[r][1]);
  }
}

template <typename T>
void rows_times_panel(const T* x, int64_t rows, int64_t in, const T* panel, T* y, int64_t out) {
  int64_t row = 0;
  for (; row + kTileRows <= rows; row += kTileRows) tile<kTileRows>(x + row * in, in, panel, y + row * out, out);
  const T* rest = x + row * in;
  T* rest_out = y + row * out;
  switch (rows - row) {
    case 5: tile<5>(rest, in, panel, rest_out, out); break;
    case 4: tile<4>(rest, in, panel, rest_out, out); break;
    case 3: tile<3>(rest, in, panel, rest_out, out); break;
    case 2: tile<2>(rest, in, panel, rest_out, out); break;
    case 1: tile<1>(rest, in, panel, rest_out, out); break;
    default: break;
  }
}

template <typename T>
void panel_product(const T* x, int64_t rows, int64_t in, const T* panels, int64_t out, T* y) {
  const int64_t count = out / kPanel;
  for (int64_t first_row = 0; first_row < rows; first_row += kRowGroup) {
    const int64_t group = std::min(kRowGroup, rows - first_row);
    at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
      for (int64_t panel = first; panel < last; ++panel) {
        rows_times_panel(x + first_row * in, group, in, panels + panel * in * kPanel,
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
