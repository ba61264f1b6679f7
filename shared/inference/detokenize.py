"""Incremental detokenization that never emits part of a character.

A byte-level BPE token can end in the middle of a UTF-8 sequence (a Chinese character is three
bytes, an emoji four), and decoding such ids yields U+FFFD. Text whose decoding ends in U+FFFD is
held back until the following tokens complete it. Bytes that can never form a character (a stray
continuation byte from a random model, or a sequence cut off by the token limit) are dropped, so
the streamed deltas contain no U+FFFD and join to exactly `text`.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turn generated token ids into text deltas, one `push` per token."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        # Ids of the last emitted piece, decoded again in front of new ids so that tokenizers whose
        # decoding depends on the previous token (SentencePiece's leading space) stay exact.
        self._context: list[int] = []
        self._pending: list[int] = []
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one token and return the text it completes, possibly empty."""
        self._pending.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return the text still held back at the end of generation, without partial characters."""
        return self._advance(final=True) if self._pending else ""

    def _advance(self, final: bool) -> str:
        context_text = self._decode(self._context)
        window = self._decode(self._context + self._pending)
        if window.endswith(REPLACEMENT) and not final:
            return ""  # A character may still be incomplete; wait for the next token.
        new_text = window[len(context_text) :] if window.startswith(context_text) else window
        self._context, self._pending = self._pending, []
        delta = new_text.replace(REPLACEMENT, "")
        self.text += delta
        return delta
