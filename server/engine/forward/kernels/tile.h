// The register tile of the products on panels (panel_linear.cpp, chunk_attention.cpp): up to 6 rows times one
// panel of 16 columns, whose 6 x 16 sums stay in 12 vector registers while the tile walks the panel once, each of
// the panel's weights loaded once for all the tile's rows. A panel holds, for each input element, the 16 weights
// it multiplies as one contiguous run, `panel_stride` apart from the next element's. Each output is summed over
// the inputs in order, whatever the number of rows: a row's result does not depend on the rows beside it.
#pragma once

#include <cstdint>

#include "vector.h"

namespace rpserve {

constexpr int64_t kPanel = 16;  // columns a panel holds: two vectors of eight
constexpr int64_t kTileRows = 6;

inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// R rows of `x` (`x_stride` apart, `in` wide) times one panel: R x 16 outputs, `y_stride` apart, written or, with
// `kAccumulate`, added to what `y` holds. Its multiply-adds are fused (the library is built with -ffp-contract=off
// for the rotary embedding's sake; here the sums' rounding is ours to choose, and fused they run at twice the rate).
template <int R, bool kAccumulate, typename X, typename W, typename Y>
__attribute__((optimize("fp-contract=fast"))) inline void tile(const X* x, int64_t x_stride, int64_t in,
                                                                const W* panel, int64_t panel_stride, Y* y,
                                                                int64_t y_stride) {
  v8 sums[R][2];
  for (int r = 0; r < R; ++r) {
    sums[r][0] = kAccumulate ? load8(y + r * y_stride) : v8{};
    sums[r][1] = kAccumulate ? load8(y + r * y_stride + 8) : v8{};
  }
  for (int64_t k = 0; k < in; ++k) {
    const v8 low = load8(panel + k * panel_stride), high = load8(panel + k * panel_stride + 8);
    for (int r = 0; r < R; ++r) {
      const float input = to_float(x[r * x_stride + k]);
      sums[r][0] += input * low;
      sums[r][1] += input * high;
    }
  }
  for (int r = 0; r < R; ++r) {
    store8(y + r * y_stride, sums[r][0]);
    store8(y + r * y_stride + 8, sums[r][1]);
  }
}

// `rows` rows of `x` times one panel, six rows a tile.
template <bool kAccumulate, typename X, typename W, typename Y>
void rows_times_panel(const X* x, int64_t rows, int64_t x_stride, int64_t in, const W* panel, int64_t panel_stride,
                      Y* y, int64_t y_stride) {
  int64_t row = 0;
  for (; row + kTileRows <= rows; row += kTileRows) {
    tile<kTileRows, kAccumulate>(x + row * x_stride, x_stride, in, panel, panel_stride, y + row * y_stride, y_stride);
  }
  const X* rest = x + row * x_stride;
  Y* rest_out = y + row * y_stride;
  switch (rows - row) {
    case 5: tile<5, kAccumulate>(rest, x_stride, in, panel, panel_stride, rest_out, y_stride); break;
    case 4: tile<4, kAccumulate>(rest, x_stride, in, panel, panel_stride, rest_out, y_stride); break;
    case 3: tile<3, kAccumulate>(rest, x_stride, in, panel, panel_stride, rest_out, y_stride); break;
    case 2: tile<2, kAccumulate>(rest, x_stride, in, panel, panel_stride, rest_out, y_stride); break;
    case 1: tile<1, kAccumulate>(rest, x_stride, in, panel, panel_stride, rest_out, y_stride); break;
    default: break;
  }
}

}  // namespace rpserve
