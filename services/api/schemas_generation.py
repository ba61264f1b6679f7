"""Request and response bodies of /generate, the OpenAI-compatible routes and /v1/models.

Bounds live here, so an invalid value is a 422 naming its field before any stream starts. The
context-length check needs the tokenizer and is done by the engine (a 400 naming both numbers).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.hparams import ADGEN_SOURCE_PREFIX
from shared.inference.params import GenerationParams

MAX_NEW_TOKENS = 2048
MAX_PROMPT_CHARS = 20_000

FinishReason = Literal["stop", "length", "cancelled"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="Generated tokens, the stop token included.")


class GenerateRequest(BaseModel):
    """Body of POST /generate."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="Product tags, e.g. `类型#裙*颜色#粉红色*裙长#连衣裙`.",
        examples=["类型#裙*颜色#粉红色*裙长#连衣裙"],
    )
    source_prefix: str | None = Field(
        ADGEN_SOURCE_PREFIX, max_length=2000, description="Text put before the tags, as in training."
    )
    max_new_tokens: int = Field(512, ge=1, le=MAX_NEW_TOKENS, description="Maximum new tokens to generate.")
    temperature: float = Field(0.95, gt=0, le=2, description="Sampling temperature, with do_sample.")
    top_p: float = Field(0.7, gt=0, le=1, description="Nucleus sampling mass, with do_sample.")
    do_sample: bool = Field(True, description="Sample; false decodes greedily (reproducible).")
    repetition_penalty: float = Field(1.0, gt=0, le=2, description="Above 1 discourages repeated tokens.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed of sampling.")
    stream: bool = Field(True, description="Stream server-sent events; false returns one JSON object.")

    @field_validator("content")
    @classmethod
    def _reject_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content is blank; send product tags such as 类型#裙*颜色#粉红色")
        return value

    def params(self) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )


class GenerateResponse(BaseModel):
    """Body of POST /generate with `"stream": false`, and data of the stream's `done` event."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    model: str


class TokenData(BaseModel):
    """Data of a `token` event: new text, never part of a character."""

    text: str


class ErrorData(BaseModel):
    """Data of an `error` event, the last event of a stream that failed after it started."""

    message: str


class ModelLoadRequest(BaseModel):
    """Body of POST /v1/models/load: a model folder inside VOLUMES_DIR, by path or by name."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="Folder of merged weights, a base model or an adapter.")
    name: str | None = Field(None, description="Folder name under the merged (or models) volume.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelLoadRequest:
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of `path` or `name`")
        return self


class ModelLoadResponse(BaseModel):
    status: Literal["loading"]
    path: str


class ModelCard(BaseModel):
    """One entry of GET /v1/models, OpenAI's model object plus the serving state."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "adgen-stack"
    status: Literal["serving", "loading", "available"]
    path: str | None = None
    base_model: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[dict] = Field(description="Text, or OpenAI content parts of type `text`.")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """Body of POST /v1/chat/completions; the fields the OpenAI API defines that this server honours.

    Other OpenAI fields are accepted and ignored, so official clients work unchanged. The last
    message must be the user's tags; earlier turns become the history of the chat template.
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="Id from GET /v1/models.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Alias of max_completion_tokens."
    )
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, ge=0, le=2, description="0 decodes greedily, as in the OpenAI API.")
    top_p: float = Field(1.0, gt=0, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    stop: str | list[str] | None = Field(None, description="Not supported; must be empty.")
    # Extensions, sent by the openai client through `extra_body`.
    source_prefix: str | None = Field(ADGEN_SOURCE_PREFIX, max_length=2000)
    repetition_penalty: float = Field(1.0, gt=0, le=2)

    @field_validator("stop")
    @classmethod
    def _reject_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value:
            raise ValueError("stop sequences are not supported; generation stops at the model's end token")
        return value

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if value[-1].role != "user" or not value[-1].text().strip():
            raise ValueError("the last message must be a non-empty user message with the product tags")
        return value

    def params(self) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or 512,
            do_sample=self.temperature > 0,
            temperature=self.temperature if self.temperature > 0 else 1.0,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )

    def conversation(self) -> tuple[str | None, list[tuple[str, str]], str]:
        """Split the messages into the system text, earlier (user, assistant) turns and the prompt.

        Consecutive messages of one role are joined with a newline, and an assistant turn with no
        user turn before it gets an empty user turn, so no text is dropped.
        """
        system = "\n".join(message.text() for message in self.messages if message.role == "system") or None
        history: list[tuple[str, str]] = []
        user: str | None = None
        for message in self.messages[:-1]:
            if message.role == "user":
                user = message.text() if user is None else f"{user}\n{message.text()}"
            elif message.role == "assistant":
                if user is None and history:
                    history[-1] = (history[-1][0], f"{history[-1][1]}\n{message.text()}")
                else:
                    history.append((user or "", message.text()))
                user = None
        prompt = self.messages[-1].text()
        return system, history, prompt if user is None else f"{user}\n{prompt}"
