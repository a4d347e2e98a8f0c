"""The captured decode step's self-check: before serving captured, a few steps of two synthetic rows (in two
buckets) run eager and captured from the same cache, and must agree.

Agreement: the logits within a tolerance of the model's dtype, and the same greedy token wherever eager's best two
tokens are further apart than that tolerance (a near-tie may flip on rounding alone). The check feeds both the
eager tokens, so one flip cannot make every later step differ.
"""

import torch

from server.engine.forward.decode_graphs import CaptureFailed
from server.engine.forward.runner import ModelRunner

CHECK_STEPS = 4
# (absolute, relative to the largest logit): rounding differences between the two attention layouts.
TOLERANCES = {torch.float32: (1e-3, 1e-4), torch.float16: (0.05, 0.01), torch.bfloat16: (0.1, 0.02)}


def captured_decode_problem(runner: ModelRunner, vocab_size: int, dtype: torch.dtype, context: int) -> str | None:
    """None when the captured decode step gives what the eager one gives; else what differed. Leaves the runner
    as it was."""
    generator = torch.Generator().manual_seed(0)
    lengths = [min(length, context - CHECK_STEPS - 1) for length in (24, 300)]
    rows = {
        f"self-check-{i}": torch.randint(vocab_size, (length,), generator=generator).tolist()
        for i, length in enumerate(lengths)
    }
    try:
        return _compare(runner, rows, *TOLERANCES.get(dtype, TOLERANCES[torch.bfloat16]))
    finally:
        for row in rows:
            runner.release(row)


def _compare(runner: ModelRunner, rows: dict[str, list[int]], absolute: float, relative: float) -> str | None:
    tokens = {}
    for row, prompt in rows.items():
        runner.start_prefill(row, prompt)
        logits = runner.prefill_chunk(row, len(prompt))
        assert logits is not None  # the whole prompt in one chunk
        tokens[row] = int(logits.argmax())
    for step in range(CHECK_STEPS):
        steps = list(tokens.items())
        try:
            eager, captured = runner.compare_decode(steps)
        except CaptureFailed as failure:
            return str(failure)
        allowed = absolute + relative * float(eager.abs().max())
        difference = float((eager - captured).abs().max())
        if not difference <= allowed:  # NaN differs too
            return f"step {step}: logits differ by {difference:.3g} (tolerance {allowed:.3g})"
        best_two = eager.topk(2).values
        clear = (best_two[:, 0] - best_two[:, 1]) > 2 * allowed
        flipped = clear & (eager.argmax(-1) != captured.argmax(-1))
        if bool(flipped.any()):
            return f"step {step}: a different greedy token for {int(flipped.sum())} of {len(steps)} rows"
        tokens = {row: int(token) for row, token in zip(tokens, eager.argmax(-1), strict=True)}
    return None
