// One decode step's attention over a bucket of the engine's KV cache, for Llama-style layers (rotary positions,
// grouped-query attention), in one call per layer and bucket: rotates each row's query and key, writes the key
// and value at the row's position, and attends to the row's keys up to that position, read in place.
//
// Why not SDPA over the bucket: its CPU kernel reads the keys and values at about half the memory's rate here and
// needs a mask over the bucket's width; the rotation, the cache write and the reshapes around it are some twenty
// small operators a layer, each with a fixed cost that dominates at one stream (docs/DESIGN.md).
//
// Each row's keys are split into chunks of kChunk positions (flash-decoding), so that one long row keeps every
// thread busy; the chunks' partial results are merged by their maxima and sums. The chunking depends on the row
// alone, never on the batch, so a row's result does not depend on the rows beside it.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "vector.h"

namespace rpserve {
namespace {

constexpr int64_t kChunk = 256;
constexpr int64_t kMaxGroups = 16;

// `x * c + rotated * s` rounded to the model's dtype after each operation, as transformers' rotary embedding
// computes it in that dtype (and bit for bit in float32: this file is compiled without contracting into FMAs).
template <typename T>
inline T rotate(T x, T c, T rotated, T s) {
  return T(static_cast<float>(T(static_cast<float>(x) * static_cast<float>(c))) +
           static_cast<float>(T(static_cast<float>(rotated) * static_cast<float>(s))));
}

// Llama's rotary embedding of one head vector (the halves' convention of transformers' `rotate_half`).
template <typename T>
void rotary(const T* x, const T* cos, const T* sin, int64_t dim, T* out) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    out[i] = rotate(x[i], cos[i], T(-static_cast<float>(x[i + half])), sin[i]);
    out[i + half] = rotate(x[i + half], cos[i + half], x[i], sin[i + half]);
  }
}

struct Layout {
  int64_t rows, heads, kv_heads, groups, dim, max_chunks;
};

// One (row, key/value head, chunk): the scores of the head's group of queries over the chunk's keys, softmax
// numerators, and their weighted sum of values, unnormalised; with each query's maximum and sum for the merge.
template <typename T, int64_t vectors>
void attend_chunk(const float* queries, const T* keys, const T* values, int64_t key_stride, int64_t value_stride,
                  int64_t count, int64_t groups, float* out, float* maxima, float* sums) {
  alignas(32) float scores[kChunk];
  for (int64_t g = 0; g < groups; ++g) {
    v8 query[vectors];
    for (int64_t j = 0; j < vectors; ++j) query[j] = load8(queries + (g * vectors + j) * 8);
    int64_t t = 0;
    for (; t + 8 <= count; t += 8) {  // eight keys at a time, their sums reduced together
      v8 products[8];
      for (int i = 0; i < 8; ++i) {
        const T* key = keys + (t + i) * key_stride;
        v8 even = query[0] * load8(key), odd = query[1] * load8(key + 8);
        for (int64_t j = 2; j < vectors; j += 2) {
          even += query[j] * load8(key + 8 * j);
          odd += query[j + 1] * load8(key + 8 * j + 8);
        }
        products[i] = even + odd;
      }
      store8(scores + t, sums8(products));
    }
    for (; t < count; ++t) {
      const T* key = keys + t * key_stride;
      v8 sum = query[0] * load8(key);
      for (int64_t j = 1; j < vectors; ++j) sum += query[j] * load8(key + 8 * j);
      scores[t] = sum8(sum);
    }
    float maximum = -INFINITY;
    for (int64_t i = 0; i < count; ++i) maximum = std::max(maximum, scores[i]);
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t i = 0; i < count; ++i) {
      scores[i] = fast_exp(scores[i] - maximum);
      total += scores[i];
    }
    maxima[g] = maximum;
    sums[g] = total;
    v8 weighted[vectors] = {};
    for (int64_t i = 0; i < count; ++i) {
      const T* value = values + i * value_stride;
      for (int64_t j = 0; j < vectors; ++j) weighted[j] += scores[i] * load8(value + 8 * j);
    }
    std::memcpy(out + g * vectors * 8, weighted, sizeof weighted);
  }
}

template <typename T, int64_t vectors>
void attend(const Layout& shape, const float* queries, const at::Tensor& keys, const at::Tensor& values,
            const int64_t* lengths, T* output) {
  const int64_t dim = shape.dim, groups = shape.groups, max_chunks = shape.max_chunks;
  const int64_t tasks = shape.rows * shape.kv_heads * max_chunks;
  std::vector<float> partial(tasks * groups * dim), maxima(tasks * groups, -INFINITY), sums(tasks * groups);
  const T* key_data = keys.const_data_ptr<T>();
  const T* value_data = values.const_data_ptr<T>();
  at::parallel_for(0, tasks, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t chunk = task % max_chunks, head = task / max_chunks % shape.kv_heads;
      const int64_t row = task / (max_chunks * shape.kv_heads);
      const int64_t begin = chunk * kChunk, end = std::min(lengths[row], begin + kChunk);
      if (begin >= end) continue;
      const T* row_keys = key_data + row * keys.stride(0) + head * keys.stride(1) + begin * keys.stride(2);
      const T* row_values = value_data + row * values.stride(0) + head * values.stride(1) + begin * values.stride(2);
      attend_chunk<T, vectors>(queries + (row * shape.heads + head * groups) * dim, row_keys, row_values,
                               keys.stride(2), values.stride(2), end - begin, groups,
                               partial.data() + task * groups * dim, maxima.data() + task * groups,
                               sums.data() + task * groups);
    }
  });
  at::parallel_for(0, shape.rows * shape.heads, 1, [&](int64_t first, int64_t last) {
    for (int64_t index = first; index < last; ++index) {
      const int64_t row = index / shape.heads, head = index % shape.heads / groups, g = index % groups;
      const int64_t base = (row * shape.kv_heads + head) * max_chunks;
      float maximum = -INFINITY;
      for (int64_t c = 0; c < max_chunks; ++c) maximum = std::max(maximum, maxima[(base + c) * groups + g]);
      float total = 0.f;
      v8 merged[vectors] = {};
      for (int64_t c = 0; c < max_chunks; ++c) {
        const int64_t slot = (base + c) * groups + g;
        if (maxima[slot] == -INFINITY) continue;
        const float weight = fast_exp(maxima[slot] - maximum);
        total += weight * sums[slot];
        for (int64_t j = 0; j < vectors; ++j) merged[j] += weight * load8(partial.data() + slot * dim + 8 * j);
      }
      for (int64_t j = 0; j < vectors; ++j) store8(output + index * dim + 8 * j, merged[j] / total);
    }
  });
}

template <typename T, int64_t vectors>
at::Tensor decode(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& keys,
                  at::Tensor& values, const at::Tensor& positions, Layout shape, double scale) {
  const int64_t dim = shape.dim, width = keys.size(2);
  const int64_t* position = positions.const_data_ptr<int64_t>();
  std::vector<int64_t> lengths(shape.rows);
  for (int64_t row = 0; row < shape.rows; ++row) {
    TORCH_CHECK(position[row] >= 0 && position[row] < width, "a position beyond the bucket's width");
    lengths[row] = position[row] + 1;
    shape.max_chunks = std::max(shape.max_chunks, (lengths[row] + kChunk - 1) / kChunk);
  }
  std::vector<float> queries(shape.rows * shape.heads * dim);
  const T* projected = qkv.const_data_ptr<T>();
  T* key_data = keys.mutable_data_ptr<T>();
  T* value_data = values.mutable_data_ptr<T>();
  at::parallel_for(0, shape.rows * shape.heads, 1, [&](int64_t first, int64_t last) {
    std::vector<T> rotated(dim);
    for (int64_t index = first; index < last; ++index) {
      const int64_t row = index / shape.heads, head = index % shape.heads;
      const T* source = projected + row * qkv.stride(0);
      const T* row_cos = cos.const_data_ptr<T>() + row * cos.stride(0);
      const T* row_sin = sin.const_data_ptr<T>() + row * sin.stride(0);
      rotary(source + head * dim, row_cos, row_sin, dim, rotated.data());
      for (int64_t i = 0; i < dim; ++i) queries[index * dim + i] = static_cast<float>(rotated[i]) * scale;
      if (head >= shape.kv_heads) continue;
      const int64_t at = position[row];
      T* key = key_data + row * keys.stride(0) + head * keys.stride(1) + at * keys.stride(2);
      rotary(source + (shape.heads + head) * dim, row_cos, row_sin, dim, key);
      T* value = value_data + row * values.stride(0) + head * values.stride(1) + at * values.stride(2);
      std::memcpy(value, source + (shape.heads + shape.kv_heads + head) * dim, dim * sizeof(T));
    }
  });
  at::Tensor output = at::empty({shape.rows, shape.heads * dim}, qkv.options());
  attend<T, vectors>(shape, queries.data(), keys, values, lengths.data(), output.mutable_data_ptr<T>());
  return output;
}

template <typename T>
at::Tensor decode_for_dim(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& keys,
                          at::Tensor& values, const at::Tensor& positions, const Layout& shape, double scale) {
  if (shape.dim == 64) return decode<T, 8>(qkv, cos, sin, keys, values, positions, shape, scale);
  return decode<T, 16>(qkv, cos, sin, keys, values, positions, shape, scale);
}

// qkv [rows, (heads + 2 kv heads) * dim]: the stacked projections of the bucket's rows; cos, sin [rows, dim]; keys,
// values: the bucket's layer tensors [capacity >= rows, kv heads, width, dim]; positions [rows] (int64): where
// each row writes. Returns [rows, heads * dim], heads side by side as transformers lays them out.
at::Tensor decode_attention(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& keys,
                            at::Tensor& values, const at::Tensor& positions, int64_t heads, double scale) {
  const int64_t rows = qkv.size(0), kv_heads = keys.size(1), dim = keys.size(3);
  TORCH_CHECK(dim == 64 || dim == 128, "head dimension 64 or 128, not ", dim);
  TORCH_CHECK(heads % kv_heads == 0 && heads / kv_heads <= kMaxGroups, "unsupported head grouping");
  TORCH_CHECK(qkv.dim() == 2 && qkv.size(1) == (heads + 2 * kv_heads) * dim && qkv.stride(1) == 1, "qkv's shape");
  TORCH_CHECK(cos.size(0) == rows && sin.size(0) == rows && cos.size(1) == dim && cos.stride(1) == 1 &&
                  sin.size(1) == dim && sin.stride(1) == 1,
              "cos and sin's shape");
  TORCH_CHECK(keys.sizes() == values.sizes() && keys.size(0) >= rows && keys.stride(3) == 1 && values.stride(3) == 1,
              "the bucket's shape");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous() && positions.numel() == rows,
              "positions: int64, one a row");
  const auto dtype = qkv.scalar_type();
  TORCH_CHECK(cos.scalar_type() == dtype && sin.scalar_type() == dtype && keys.scalar_type() == dtype &&
                  values.scalar_type() == dtype,
              "one dtype for every tensor");
  const Layout shape{rows, heads, kv_heads, heads / kv_heads, dim, 1};
  if (dtype == at::kFloat) return decode_for_dim<float>(qkv, cos, sin, keys, values, positions, shape, scale);
  TORCH_CHECK(dtype == at::kBFloat16, "float32 or bfloat16, not ", dtype);
  return decode_for_dim<c10::BFloat16>(qkv, cos, sin, keys, values, positions, shape, scale);
}

}  // namespace
}  // namespace rpserve

TORCH_LIBRARY_IMPL(rpserve_cpu, CPU, m) { m.impl("decode_attention", &rpserve::decode_attention); }
