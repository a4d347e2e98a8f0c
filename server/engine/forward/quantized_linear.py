"""What the quantized linear layers (int8_linear.py, int4_linear.py, fp8_linear.py) share: the widths and bias of
the layer they replace, and the reshaping around their kernel's product of [rows, in] activations."""

import torch


class QuantizedLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.bias = linear.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output = self.product(hidden.reshape(-1, self.in_features)).to(hidden.dtype)
        if self.bias is not None:
            output = output + self.bias
        return output.reshape(*hidden.shape[:-1], self.out_features)

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        """The layer's [rows, out] output without its bias, from [rows, in] activations in the model's dtype."""
        raise NotImplementedError
