"""One decode step's forward over the bucketed batch cache: the same function runs eager and, for a padded batch,
inside a CUDA graph capture (decode_graphs.py).

Everything a step reads from the host is one [2, batch] tensor of tokens and positions; the write columns and the
attention masks are computed from it inside the forward (kv/step_layout.py), so that a captured step replays them
for new inputs. The model gets no cache of transformers': each attention call writes this step's keys and values
into the buckets and attends there (attention.py), through the `bucket_layout` keyword.
"""

import torch
from transformers import PreTrainedModel

from server.engine.kv.step_layout import DecodeBatch, StepLayout


class DecodeStep:
    def __init__(self, model: PreTrainedModel, device: torch.device) -> None:
        self._model = model
        # Already prepared (4-D), so that transformers makes no mask: each bucket's attention masks its own rows.
        self._no_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)

    def __call__(self, batch: DecodeBatch, inputs: torch.Tensor) -> torch.Tensor:
        """Next-token logits [batch, vocab] for `batch`, whose tokens and positions `inputs` are on the device."""
        output = self._model(
            input_ids=inputs[0].unsqueeze(1),
            position_ids=inputs[1].unsqueeze(1),
            attention_mask=self._no_mask,
            use_cache=False,
            bucket_layout=StepLayout(batch, inputs[1]),
            logits_to_keep=1,
        )
        return output.logits[:, -1]
