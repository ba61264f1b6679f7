"""Prompt building and tokenization shared by training, evaluation and serving.

Prompts come from the tokenizer's own chat template, so a real GLM-4 checkpoint and the tiny model
build them the same way. As in ChatGLM-Efficient-Tuning, `source_prefix` is put in front of the
user's text in the same turn, and the loss covers only the response and its end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.data.registry import Example

IGNORE_INDEX = -100

# GLM-4's format: [gMASK]<sop>, then each turn as <|role|>\ncontent; generation starts after <|assistant|>\n.
GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_messages(
    prompt: str,
    source_prefix: str | None = None,
    system: str | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> list[dict[str, str]]:
    """Return chat messages for one request: optional system turn, earlier turns, then the prompt."""
    messages = [{"role": "system", "content": system}] if system else []
    for user_turn, assistant_turn in history:
        messages += [{"role": "user", "content": user_turn}, {"role": "assistant", "content": assistant_turn}]
    messages.append({"role": "user", "content": (source_prefix or "") + prompt})
    return messages


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the prompt, ending where the assistant's answer starts."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_truncated_prompt(
    tokenizer, prompt: str, max_length: int, source_prefix: str | None = None, **turns
) -> tuple[list[int], bool]:
    """Encode a prompt of at most `max_length` tokens, cutting the end of the user's text if needed.

    The template's head and tail (role tokens, the assistant start) are always kept, so a truncated
    prompt still ends where the model's response starts. Returns the ids and whether the text was cut.
    """
    ids = encode_prompt(tokenizer, build_messages(prompt, source_prefix, **turns))
    if len(ids) <= max_length:
        return ids, False
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    overhead = len(ids) - len(prompt_ids)
    keep = max(max_length - overhead, 0)
    while keep > 0:
        # A cut inside a multi-byte character decodes to U+FFFD; drop it and shorten until it fits.
        shortened = tokenizer.decode(prompt_ids[:keep]).replace("\ufffd", "")
        ids = encode_prompt(tokenizer, build_messages(shortened, source_prefix, **turns))
        if len(ids) <= max_length:
            return ids, True
        keep -= 1
    # Even without the user's text the prompt is too long (a long prefix or history): cut its middle.
    empty = encode_prompt(tokenizer, build_messages("", source_prefix, **turns))
    tail = _template_tail_length(tokenizer, source_prefix, turns)
    return empty[: max(max_length - tail, 0)] + empty[len(empty) - tail :], True


def _template_tail_length(tokenizer, source_prefix: str | None, turns: dict) -> int:
    """Count the template tokens after the user's text, such as `<|assistant|>\\n`."""
    with_text = encode_prompt(tokenizer, build_messages("。", source_prefix, **turns))
    without = encode_prompt(tokenizer, build_messages("", source_prefix, **turns))
    length = 0
    while length < min(len(with_text), len(without)) and with_text[-1 - length] == without[-1 - length]:
        length += 1
    return length


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode_example(
    tokenizer,
    example: Example,
    source_prefix: str | None,
    max_source_length: int,
    max_target_length: int,
) -> EncodedExample:
    """Encode prompt plus response for training; labels mask the prompt with IGNORE_INDEX."""
    prompt_ids, prompt_cut = encode_truncated_prompt(
        tokenizer,
        example.prompt,
        max_source_length,
        source_prefix,
        system=example.system,
        history=example.history,
    )
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    response_cut = len(response_ids) + 1 > max_target_length
    response_ids = response_ids[: max_target_length - 1] + [tokenizer.eos_token_id]
    return EncodedExample(
        input_ids=prompt_ids + response_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + response_ids,
        truncated=prompt_cut or response_cut,
    )
