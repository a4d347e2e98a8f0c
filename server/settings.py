"""The one settings object: every option comes from a command-line flag or an RPSERVE_* environment variable."""

import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from prompting import STOP_STRING
from server.engine.options import default_cache_dir

ENV_PREFIX = "RPSERVE_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="rpserve",
        frozen=True,
    )

    model: str | None = Field(
        None,
        description="Base model: a Hugging Face id or a local folder. Unset: the embedded SmolLM2-135M-Instruct.",
    )
    adapter: str | None = Field(None, description="LoRA adapter (Hugging Face id or local folder), applied with peft.")
    merge: bool = Field(True, description="Merge the adapter into the weights; --no-merge keeps it separate.")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: bfloat16 on CUDA and on CPUs with AVX512-BF16 or AMX, else float32.",
    )
    served_model_name: str | None = Field(
        None, description="Model id shown by /v1/models. Unset: derived from the adapter, else the base model."
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where the embedded model's converted HF folder and the compiled CPU kernels are kept.",
    )
    api_key: str | None = Field(
        None,
        description="When set, every route but /health and /metrics needs it as `Authorization: Bearer` or "
        "`x-api-key`.",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host names requests may be addressed to (`*` any, `*.example.com` subdomains); others get "
        "400, against DNS rebinding. Unset: localhost, 127.0.0.1, [::1] and the bound address, or any host when "
        "bound to 0.0.0.0 or ::.",
    )
    cors_origins: list[str] = Field(
        [],
        description="Web origins whose pages may call the API from a browser (`*`: any, then without "
        "credentials). Unset: none.",
    )
    web: bool = Field(True, description="Serve the built-in roleplay page at /; --no-web turns it off.")
    stop_strings: list[str] = Field(
        [STOP_STRING], description="Stop strings always applied for this model family, merged with each request's."
    )
    max_queued: int = Field(
        64, ge=0, description="Requests that may wait beyond --max-running; more are refused at once with 429."
    )
    max_body_mb: float = Field(16, gt=0, description="Largest request body accepted (413 beyond).")
    sampling_preset: Path | None = Field(
        None,
        description="JSON file of sampler defaults (any client's field names) replacing the model card's.",
    )
    dry_breakers_always: list[str] = Field(
        [STOP_STRING], description="DRY sequence breakers added to every request's list."
    )
    trim_label_space: bool = Field(
        True,
        description="Raw-prompt completions (/v1/completions, /completion) whose prompt ends with a `::::` label "
        "and its space: send the prompt without the space and drop the reply's leading space (see the README).",
    )
    max_running: int = Field(8, ge=1, description="Requests generating at once; the rest wait in the queue.")
    prefix_cache_mb: int = Field(
        1024,
        ge=0,
        description="At most this much of the KV-cache memory keeps caches of finished requests, reused by prompts "
        "that start the same way (follow-up turns, swipes); 0 turns it off.",
    )
    memory_fraction: float = Field(
        0.9,
        gt=0.05,
        le=1,
        description="Share of the device's memory (a GPU's, or on CPU the memory available at start) that weights "
        "and KV caches may use; running requests and the prefix cache share what the weights leave. A request "
        "that does not fit waits.",
    )
    kv_cache_mb: int | None = Field(
        None,
        ge=1,
        description="KV-cache memory for running requests and the prefix cache; unset: from `--memory-fraction`.",
    )
    decode_mode: Literal["auto", "eager", "captured"] = Field(
        "auto",
        description="Decode steps: `captured` records each batch shape's step once as a CUDA graph and replays it "
        "(checked against eager at start-up; on any failure the server warns and runs eager), `eager` runs every "
        "operation each step, `auto` is captured on CUDA and eager on CPU (where there are no graphs to replay).",
    )
    quantization: Literal["none", "int8", "int4", "fp8"] = Field(
        "none",
        description="Weights of the decoder's linear layers, quantized after the adapter is merged: `int8` keeps "
        "one byte per weight with a scale per output channel, `int4` half a byte with a scale and an offset per "
        "group of `--int4-group-size` input columns (activations, embeddings and the LM head stay in "
        "`--dtype`), `fp8` one byte per weight (e4m3, a scale per output channel) with activations in e4m3 too "
        "(a scale per token), on GPUs with fp8 products only (compute capability 8.9: Ada, Hopper, Blackwell); "
        "checked at start-up against the unquantized model on a probe text (its KL divergence is "
        "logged and in `/health`), a broken result stops the start. `none`: as loaded. Measure the loss on your "
        "weights with `python -m bench.fidelity`.",
    )
    int4_group_size: int = Field(
        128,
        description="With `--quantization int4`: input columns sharing a scale and offset (smaller: closer to the "
        "model, a little larger): 32, 64, 128 or 256. A layer whose width it does not divide takes the largest smaller "
        "one that does.",
    )
    kv_cache_dtype: Literal["auto", "int8", "fp8"] = Field(
        "auto",
        description="How the KV cache stores keys and values: `auto` in `--dtype`; `int8` or `fp8` (e4m3) in one "
        "byte each plus a power-of-two scale per token and head, about half of bfloat16's bytes: twice the context "
        "or the chats in the same memory, at a small cost in fidelity (`python -m bench.fidelity "
        "--kv-cache-dtype int8` measures it). Attention reads the 8-bit cache back into `--dtype`.",
    )
    cpu_weights: Literal["packed", "plain"] = Field(
        "packed",
        description="On the CPU: `packed` stacks each Llama layer's query/key/value and gate/up projections into "
        "one matrix product each and multiplies by weights oneDNN laid out once for its kernel (faster decoding, "
        "above all with several streams: bench/RESULTS.md); `plain` runs the layers as loaded. bfloat16 weights "
        "are packed only on CPUs with AVX512; no effect on GPUs or with an unmerged adapter.",
    )
    compile: Literal["auto", "off"] = Field(
        "auto",
        description="On the CPU: `auto` compiles the engine's C++ kernels (a decode step's attention over the KV "
        "cache with its rotary embedding, the norms, the MLP's activation) for this CPU at the first start, about "
        "30 s with `g++`, and loads them from `--cache-dir` at later starts; where that fails, one warning and the "
        "model runs on transformers' operators. `off` never compiles. No effect on GPUs.",
    )
    cache_reuse: int = Field(
        0,
        ge=0,
        description="Once a chat is past the context and the client drops its oldest messages, reuse the cached "
        "runs of at least this many prompt tokens that only moved, their keys shifted to the new positions, "
        "instead of prefilling them again (llama.cpp's --cache-reuse; an approximation: see the README). 0: off. "
        "A request's `n_cache_reuse` overrides it.",
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="The context the server allows (prompt plus generated tokens), at most the model's own. Unset: "
        "the model's (`max_position_embeddings`).",
    )
    prefill_chunk: int = Field(
        512,
        ge=16,
        description="Prompt tokens prefilled per step while other requests are generating, so a long new prompt "
        "does not stall their streams.",
    )
    shutdown_timeout: float = Field(
        30,
        ge=0,
        description="On SIGTERM: seconds running requests get to finish before they are cancelled; then exit 0.",
    )
    request_timeout: float = Field(
        600,
        ge=0,
        description="Seconds a request may take from its arrival; then it ends with what it has generated "
        "(finish reason `length`), or a 503 when it has generated nothing. 0 turns it off.",
    )
    log_content: bool = Field(
        False,
        description="Debugging only: log each generation's prompt and output text (private content) on the "
        "`rpserve.content` logger.",
    )
    ray_min_replicas: int = Field(1, ge=1, description="Ray Serve (`rpserve-ray`): fewest model replicas.")
    ray_max_replicas: int = Field(
        1, ge=1, description="Ray Serve: most model replicas; above `--ray-min-replicas`, Serve autoscales."
    )
    ray_gpus_per_replica: float = Field(1, ge=0, description="Ray Serve: GPUs each model replica reserves.")
    ray_cpus_per_replica: float = Field(1, ge=0, description="Ray Serve: CPUs each model replica reserves.")
    ray_max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        description="Ray Serve: requests one replica accepts at once; unset: `--max-running` + `--max-queued`.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")

    @field_validator("stop_strings")
    @classmethod
    def _no_empty_stop(cls, stops: list[str]) -> list[str]:
        if any(stop == "" for stop in stops):
            raise ValueError("stop strings must not be empty")
        return stops


def command_line_settings(program: str, argv: list[str] | None = None) -> Settings | None:
    """The settings from flags (`argv`, default the process's) and environment; None after printing the first
    problem as one `<program>: error: ...` line."""
    try:
        return Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as error:
        first = error.errors()[0]
        print(f"{program}: error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return None
