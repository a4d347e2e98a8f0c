"""What a new token means for its request, with a plain stand-in vocabulary (no model, no tokenizer): text that
is certain goes out, and the processor says when the request ends (EOS, a stop string, its length, the context)
or must back off (a banned string)."""

from dataclasses import dataclass, field

from sampling import SamplingParams
from server.engine.output_processor import BackOff, Ending, OutputProcessor
from server.engine.request import GenerationOutput, GenerationRequest
from server.engine.request_state import RequestState

EOS = 0
PIECES = [b"", b"Hello", b" world", b"::", b"!", b"\xf0\x9f", b"\x98\x80", b" bad"]
HELLO, WORLD, COLONS, BANG, EMOJI_START, EMOJI_END, BAD = range(1, 8)


@dataclass
class Vocabulary:
    token_bytes: list[bytes] = field(default_factory=lambda: PIECES)
    eos_ids: frozenset[int] = frozenset({EOS})
    special_ids: frozenset[int] = frozenset({EOS})


@dataclass
class Sink:
    outputs: list[tuple[str, GenerationOutput]] = field(default_factory=list)

    def put(self, sample_id: str, output: GenerationOutput) -> None:
        self.outputs.append((sample_id, output))

    def flush(self) -> None:
        pass

    def texts(self) -> list[str]:
        return [output.text for _, output in self.outputs]


def setup(context: int = 100, **request: object) -> tuple[OutputProcessor, RequestState, Sink]:
    sink = Sink()
    processor = OutputProcessor(Vocabulary(), context, sink, None, log_content=False)  # type: ignore[arg-type]
    fields = {"stop_strings": ("::::",), "max_tokens": 10, **request}
    generation = GenerationRequest(sample_id="s", prompt_ids=(1, 2, 3), params=SamplingParams(), **fields)
    state = RequestState(generation, processor.detokenizer(skip_special_tokens=True))
    return processor, state, sink


def test_text_goes_out_as_each_token_makes_it_certain():
    processor, state, sink = setup()
    assert [processor.advance(state, token) for token in (HELLO, WORLD)] == [None, None]
    assert sink.texts() == ["Hello", " world"] and state.output_ids == [HELLO, WORLD]


def test_eos_ends_the_request_and_is_not_text():
    processor, state, _ = setup()
    processor.advance(state, HELLO)
    assert processor.advance(state, EOS) == Ending("", "stop", by_token=True)


def test_a_stop_string_across_two_tokens_ends_the_request_and_none_of_it_is_sent():
    processor, state, sink = setup()
    processor.advance(state, HELLO)
    assert processor.advance(state, COLONS) is None  # "::" might start "::::": held back
    assert processor.advance(state, COLONS) == Ending("", "stop", "::::", by_token=True)
    assert sink.texts() == ["Hello"]


def test_held_text_is_released_when_it_turns_out_not_to_be_a_stop():
    processor, state, sink = setup()
    processor.advance(state, COLONS)
    processor.advance(state, BANG)
    assert sink.texts() == ["::!"]


def test_max_tokens_and_a_full_context_end_with_length():
    processor, state, _ = setup(max_tokens=2)
    processor.advance(state, HELLO)
    assert processor.advance(state, WORLD) == Ending(" world", "length")
    processor, state, _ = setup(context=4)  # 3 prompt tokens: room for one
    assert processor.advance(state, HELLO) == Ending("Hello", "length")


def test_a_character_split_over_two_tokens_arrives_whole():
    processor, state, sink = setup()
    processor.advance(state, EMOJI_START)
    assert sink.texts() == []
    processor.advance(state, EMOJI_END)
    assert sink.texts() == ["\U0001f600"]


def test_a_banned_string_backs_off_to_the_token_that_began_it():
    processor, state, sink = setup(banned_strings=("world bad",))
    processor.advance(state, HELLO)
    processor.advance(state, WORLD)
    outcome = processor.advance(state, BAD)
    assert outcome == BackOff(banned_at=6)
    assert processor.back_off(state, outcome.banned_at) == 1
    assert state.output_ids == [HELLO] and state.guard.bans_for(1) == {WORLD}
    processor.advance(state, BANG)
    processor.finish(state, Ending("", "stop"))
    assert "".join(sink.texts()) == "Hello!"


def test_finish_delivers_the_last_output_with_its_reason():
    processor, state, sink = setup()
    processor.advance(state, HELLO)
    processor.finish(state, Ending(" end", "stop"))
    sample_id, last = sink.outputs[-1]
    assert (sample_id, last.text, last.finish_reason, last.completion_tokens) == ("s", " end", "stop", 1)
