"""Request and response models of `POST /v1/chat/completions` and `POST /v1/chat/render`.

OpenAI's chat shape, extended for roleplay: messages carry the character `name`, an `ooc` flag makes a nameless
out-of-character note, the optional setting (`title`, `characters`, `scenario`, `opening`) forms the opening
turn, `speaker` names the character the model writes as, and `max_turns` lets it go on for several turns
(`stop_at_user_turn` ends them where the model would write for the user's side). `lorebook` and `authors_note`
add what SillyTavern and Kobold users keep beside a chat; `context_overflow` says what happens to a chat longer
than the context.
"""

import time
import uuid
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from prompting import DEFAULT_OPENING, LABEL_MARK, NEXT_TURN, AuthorsNote, Character, Lorebook, Message, Setting, label
from prompting.labels import TURN_SEPARATOR
from server.engine.request import FinishReason
from server.protocol.completions import StreamOptions, Usage
from server.protocol.generation import GenerationOptions
from server.protocol.lore import AuthorsNoteIn, LorebookField
from server.protocol.sampling import SamplerFields

MAX_TURNS = 16
# Where the model would start a turn for the user's side (a user-side character, a narrator or an OOC note).
USER_TURN_STOPS = (TURN_SEPARATOR + label("user"), label("user"))


def _unset(value: object) -> bool:
    return value is None


def _text_parts(value: object) -> object:
    """OpenAI also sends content as a list of parts; the text parts are joined."""
    if isinstance(value, list):
        return "".join(part.get("text", "") for part in value if isinstance(part, dict) and part.get("type") == "text")
    return value


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: Annotated[str, BeforeValidator(_text_parts)]
    name: str | None = None
    ooc: bool = Field(False, description="An out-of-character note: a user turn without a name, `(OOC: ...)`.")

    def message(self) -> Message:
        return Message(role=self.role, content=self.content, name=self.name or None, ooc=self.ooc)


class CharacterIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    description: str = ""


class ChatRequest(SamplerFields):
    model: str | None = Field(None, description="Accepted and ignored: this server serves one model.")
    messages: list[ChatMessageIn] = Field(default_factory=list)
    title: str | None = None
    characters: list[CharacterIn] = Field(default_factory=list)
    scenario: str | None = None
    opening: str = Field(DEFAULT_OPENING, description="The first line of the opening turn, before the headings.")
    speaker: str | None = Field(
        None, description="The character the model writes as. Unset: the last assistant-side name."
    )
    max_turns: int = Field(1, ge=1, le=MAX_TURNS, description="Let the model go on for up to this many turns.")
    stop_at_user_turn: bool = Field(
        False, description="With max_turns > 1: stop where the model would start a user-side turn."
    )
    lorebook: LorebookField | None = Field(
        None, description="Entries that enter the prompt when their keys appear in the latest messages."
    )
    authors_note: AuthorsNoteIn | None = Field(None, description="A note kept `depth` messages from the end.")
    context_overflow: Literal["error", "trim"] = Field(
        "error",
        description="A chat longer than the context: `error` (400), or `trim`: leave out the oldest messages, in "
        "chunks of a quarter of the context, so that the prompt's start stays the same for many turns.",
    )
    max_tokens: int | None = Field(
        None, ge=1, validation_alias=AliasChoices("max_tokens", "max_completion_tokens", "max_new_tokens")
    )
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def conversation(self) -> tuple[list[Message], Setting]:
        setting = Setting(
            title=self.title,
            characters=tuple(Character(c.name, c.description) for c in self.characters),
            scenario=self.scenario,
            opening=self.opening,
        )
        return [m.message() for m in self.messages], setting

    def lore(self) -> tuple[Lorebook | None, AuthorsNote | None]:
        return (
            self.lorebook.book() if self.lorebook else None,
            self.authors_note.note() if self.authors_note else None,
        )

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [stop for stop in stops if stop]

    def generation_options(self) -> GenerationOptions:
        """One turn ends where the next label starts; with `max_turns` > 1 the label stops end only the last."""
        several = self.max_turns > 1
        return GenerationOptions(
            max_tokens=self.max_tokens,
            samples=self.n or 1,
            stops=tuple(
                [*self.stop_list(), *(USER_TURN_STOPS if self.stop_at_user_turn else ())]
                if several
                else [NEXT_TURN, *self.stop_list()]
            ),
            turn_stops=(NEXT_TURN, LABEL_MARK) if several else (),
            turns=self.max_turns,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
        )


class ChatMessageOut(BaseModel):
    role: Literal["assistant", "user"] = "assistant"
    name: str | None = None
    content: str

    @classmethod
    def of(cls, message: Message) -> "ChatMessageOut":
        return cls(
            role="assistant" if message.role == "assistant" else "user", name=message.name, content=message.content
        )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    messages: list[ChatMessageOut] | None = Field(
        None,
        exclude_if=_unset,
        description="With max_turns > 1: every turn written, the speaker's first.",
    )
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    trimmed_messages: int | None = Field(
        None, exclude_if=_unset, description="With context_overflow `trim`: the oldest messages left out."
    )


class ChatDelta(BaseModel):
    """Only what a chunk carries: the role (and name) first, then content, then nothing with finish_reason."""

    role: Literal["assistant"] | None = Field(None, exclude_if=_unset)
    name: str | None = Field(None, exclude_if=_unset)
    content: str | None = Field(None, exclude_if=_unset)


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    messages: list[ChatMessageOut] | None = Field(None, exclude_if=_unset)
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    trimmed_messages: int | None = Field(None, exclude_if=_unset, description="On the first chunk, as answered.")


class RenderResponse(BaseModel):
    prompt: str = Field(description="The prompt text, BOS included as its text.")
    token_ids: list[int]
    speaker: str | None
    trimmed_messages: int = Field(0, description="The oldest messages left out to fit the context.")
    lorebook_entries: list[int] = Field(default_factory=list, description="The lorebook entries in the prompt.")
