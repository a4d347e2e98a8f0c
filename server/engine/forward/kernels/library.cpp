// The operators of the engine's CPU kernels (torch.ops.rpserve_cpu), each implemented in its own file.

#include <torch/library.h>

TORCH_LIBRARY(rpserve_cpu, m) {
  m.def("decode_attention(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) keys, Tensor(b!) values, Tensor positions, "
        "int heads, float scale) -> Tensor");
  m.def("rms_norm(Tensor input, Tensor weight, float eps) -> Tensor");
  m.def("silu_mul(Tensor stacked) -> Tensor");
  m.def("panel_linear(Tensor input, Tensor panels) -> Tensor");
  m.def("chunk_attention(Tensor query, Tensor keys, Tensor values, float scale) -> Tensor");
}
