// A prompt chunk's attention for Llama-style layers (grouped-query attention), in one call per layer: each of the
// chunk's queries over its sequence's keys and values, every position before the chunk and its own chunk up to
// itself. Flash attention on the products' register tiles (tile.h): a work item is one key/value head and a block
// of query positions, for every query head of its group, so that each block of keys is read once for the group;
// its scores, their softmax (kept running over the key blocks by each row's maximum and sum) and the weighted sum
// of values stay in the thread's buffers.
//
// Why not torch's CPU flash attention: it ran at about half the rate of the products' kernel here, a third of a
// 512-token chunk's time at 2k tokens of context (bench/RESULTS.md).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "tile.h"
#include "vector.h"

namespace rpserve {
namespace {

constexpr int64_t kQueryBlock = 32;  // query positions of a work item
constexpr int64_t kKeyBlock = 128;   // keys whose scores a work item holds at once (a multiple of kPanel)

struct Shape {
  int64_t chunk, past, heads, kv_heads, groups, dim;
};

// Panels of 16 keys a key/value head's keys take.
int64_t panel_count(const Shape& s) { return (s.past + s.chunk + kPanel - 1) / kPanel; }

// One row's scores over a key block of `count` keys, of which the first `valid` are seen: their softmax
// numerators against the row's running maximum (updated), 0 for the others; returns the factor by which the row's
// earlier sums shrink.
float softmax_block(float* scores, int64_t count, int64_t valid, float& maximum, float& sum) {
  v8 maxima = v8{} - INFINITY;
  int64_t j = 0;
  for (; j + 8 <= valid; j += 8) {
    const v8 s = load8(scores + j);
    maxima = maxima > s ? maxima : s;
  }
  float block_max = -INFINITY;
  for (int i = 0; i < 8; ++i) block_max = std::max(block_max, maxima[i]);
  for (; j < valid; ++j) block_max = std::max(block_max, scores[j]);
  const float updated = std::max(maximum, block_max);
  const float shrink = maximum == -INFINITY ? 0.f : fast_exp(maximum - updated);
  maximum = updated;
  v8 total{};
  for (j = 0; j + 8 <= valid; j += 8) {
    const v8 p = fast_exp8(load8(scores + j) - updated);
    store8(scores + j, p);
    total += p;
  }
  float rest = 0.f;
  for (; j < valid; ++j) rest += (scores[j] = fast_exp(scores[j] - updated));
  for (; j < count; ++j) scores[j] = 0.f;
  sum = sum * shrink + sum8(total) + rest;
  return shrink;
}

// One key/value head's keys [positions, dim] as panels of 16 keys, [ceil(positions / 16), dim, 16], zero past
// the last: scores are then a product on panels.
template <typename T>
void pack_keys(const T* keys, int64_t positions, int64_t dim, int64_t panel, float* panels) {
  float* out = panels + panel * dim * kPanel;
  for (int64_t c = 0; c < kPanel; ++c) {
    const int64_t key = panel * kPanel + c;
    for (int64_t k = 0; k < dim; ++k) out[k * kPanel + c] = key < positions ? to_float(keys[key * dim + k]) : 0.f;
  }
}

// The work item of key/value head `kv_head` and the query positions [first, first + count).
template <typename T>
void attend_block(const at::Tensor& query, const float* key_panels, const T* values, const Shape& s, float scale,
                  int64_t kv_head, int64_t first, int64_t count, T* out) {
  const int64_t rows = s.groups * count, dim = s.dim;
  std::vector<float> q(rows * dim), scores(rows * kKeyBlock), acc(rows * dim, 0.f);
  std::vector<float> maxima(rows, -INFINITY), sums(rows, 0.f);
  const T* query_data = query.const_data_ptr<T>();
  const int64_t head_stride = query.stride(1), position_stride = query.stride(2), dim_stride = query.stride(3);
  for (int64_t g = 0; g < s.groups; ++g) {  // row g * count + i: query head kv_head * groups + g, position first + i
    for (int64_t i = 0; i < count; ++i) {
      const T* row = query_data + (kv_head * s.groups + g) * head_stride + (first + i) * position_stride;
      for (int64_t k = 0; k < dim; ++k) q[(g * count + i) * dim + k] = to_float(row[k * dim_stride]) * scale;
    }
  }
  const float* head_panels = key_panels + kv_head * panel_count(s) * dim * kPanel;
  const T* head_values = values + kv_head * (s.past + s.chunk) * dim;
  const int64_t end = s.past + first + count;  // the last row sees the keys before this
  for (int64_t block = 0; block < end; block += kKeyBlock) {
    const int64_t keys_here = std::min(kKeyBlock, end - block);
    for (int64_t panel = 0; panel * kPanel < keys_here; ++panel) {
      rows_times_panel<false>(q.data(), rows, dim, dim, head_panels + (block / kPanel + panel) * dim * kPanel,
                              kPanel, scores.data() + panel * kPanel, kKeyBlock);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t seen = std::min(keys_here, s.past + first + r % count + 1 - block);
      float* row_scores = scores.data() + r * kKeyBlock;
      if (seen <= 0) {  // a row that sees none of this block's keys (its own chunk's later positions)
        std::fill(row_scores, row_scores + keys_here, 0.f);
        continue;
      }
      const float shrink = softmax_block(row_scores, keys_here, seen, maxima[r], sums[r]);
      if (shrink != 1.f) {
        for (int64_t k = 0; k < dim; ++k) acc[r * dim + k] *= shrink;
      }
    }
    for (int64_t column = 0; column < dim; column += kPanel) {
      rows_times_panel<true>(scores.data(), rows, kKeyBlock, keys_here, head_values + block * dim + column, dim,
                             acc.data() + column, dim);
    }
  }
  const int64_t width = s.heads * dim;
  for (int64_t g = 0; g < s.groups; ++g) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t r = g * count + i;
      T* row = out + (first + i) * width + (kv_head * s.groups + g) * dim;
      for (int64_t k = 0; k < dim; ++k) row[k] = T(acc[r * dim + k] / sums[r]);
    }
  }
}

template <typename T>
void attend(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values, const Shape& s, float scale,
            at::Tensor& out) {
  const int64_t panels = panel_count(s), positions = s.past + s.chunk;
  std::vector<float> key_panels(s.kv_heads * panels * s.dim * kPanel);
  const T* key_data = keys.const_data_ptr<T>();
  at::parallel_for(0, s.kv_heads * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t kv_head = item / panels;
      pack_keys(key_data + kv_head * positions * s.dim, positions, s.dim, item % panels,
                key_panels.data() + kv_head * panels * s.dim * kPanel);
    }
  });
  const int64_t blocks = (s.chunk + kQueryBlock - 1) / kQueryBlock;
  // Later blocks see more keys: taken from both ends in turn, each thread's share of the items costs about the same.
  at::parallel_for(0, s.kv_heads * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t kv_head = item % s.kv_heads, turn = item / s.kv_heads;
      const int64_t block = turn % 2 == 0 ? turn / 2 : blocks - 1 - turn / 2;
      const int64_t first = block * kQueryBlock;
      attend_block<T>(query, key_panels.data(), values.const_data_ptr<T>(), s, scale, kv_head, first,
                      std::min(kQueryBlock, s.chunk - first), out.mutable_data_ptr<T>());
    }
  });
}

// query [1, heads, chunk, dim] (any strides); keys, values [1, kv heads, past + chunk, dim], contiguous: the
// sequence's whole cache, the chunk's own positions last. Returns [chunk, heads * dim], heads side by side as
// transformers lays them out.
at::Tensor chunk_attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values, double scale) {
  TORCH_CHECK(query.dim() == 4 && keys.dim() == 4 && query.size(0) == 1 && keys.size(0) == 1, "one sequence");
  TORCH_CHECK(keys.sizes() == values.sizes() && keys.is_contiguous() && values.is_contiguous(),
              "contiguous keys and values of one shape");
  const int64_t heads = query.size(1), chunk = query.size(2), dim = query.size(3), kv_heads = keys.size(1);
  TORCH_CHECK(dim % kPanel == 0 && keys.size(3) == dim, "a head dimension that is a multiple of 16");
  TORCH_CHECK(heads % kv_heads == 0, "query heads a multiple of key/value heads");
  TORCH_CHECK(keys.size(2) >= chunk, "the chunk's own keys in the cache");
  const auto dtype = query.scalar_type();
  TORCH_CHECK(keys.scalar_type() == dtype && values.scalar_type() == dtype, "one dtype for every tensor");
  const Shape shape{chunk, keys.size(2) - chunk, heads, kv_heads, heads / kv_heads, dim};
  at::Tensor out = at::empty({chunk, heads * dim}, query.options());
  if (dtype == at::kFloat) {
    attend<float>(query, keys, values, shape, static_cast<float>(scale), out);
  } else {
    TORCH_CHECK(dtype == at::kBFloat16, "float32 or bfloat16, not ", dtype);
    attend<c10::BFloat16>(query, keys, values, shape, static_cast<float>(scale), out);
  }
  return out;
}

}  // namespace
}  // namespace rpserve

TORCH_LIBRARY_IMPL(rpserve_cpu, CPU, m) { m.impl("chunk_attention", &rpserve::chunk_attention); }
