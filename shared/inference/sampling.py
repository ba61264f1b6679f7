"""Per-request decoding settings and next-token selection for one row of a batch.

The processing order and formulas follow transformers' `generate` (version 5): repetition
penalty, then temperature, then top-p, then sampling; greedy decoding applies only the penalty.
Each request samples with its own `torch.Generator`, so a seeded request draws the same tokens
whether it runs alone or batched with others.
"""

from __future__ import annotations

import random

import torch

from shared.inference.params import GenerationParams


class TokenSampler:
    """Choose the next token of one request from its row of logits."""

    def __init__(self, params: GenerationParams, prompt_ids: list[int], device: torch.device) -> None:
        self.params = params
        self._seen = torch.tensor(sorted(set(prompt_ids)), dtype=torch.long, device=device)
        self._generator = None
        if params.do_sample:
            self._generator = torch.Generator(device=device).manual_seed(
                params.seed if params.seed is not None else random.getrandbits(63)
            )

    @property
    def is_plain_greedy(self) -> bool:
        """Whether the token is the argmax of the raw logits, which a batch can compute at once."""
        return not self.params.do_sample and self.params.repetition_penalty == 1.0

    def record(self, token_id: int) -> None:
        if self.params.repetition_penalty != 1.0 and not bool((self._seen == token_id).any()):
            self._seen = torch.cat([self._seen, self._seen.new_tensor([token_id])])

    def choose(self, logits: torch.Tensor) -> int:
        """Return the next token id from a 1-D float tensor of logits over the vocabulary."""
        scores = logits.float()
        if self.params.repetition_penalty != 1.0 and self._seen.numel():
            scores = scores.clone()
            seen_scores = scores[self._seen]
            penalty = self.params.repetition_penalty
            scores[self._seen] = torch.where(seen_scores < 0, seen_scores * penalty, seen_scores / penalty)
        if not self.params.do_sample:
            return int(scores.argmax())
        scores = scores / self.params.temperature
        if self.params.top_p < 1.0:
            scores = _top_p_filter(scores, self.params.top_p)
        probabilities = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self._generator))


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to at least `top_p`."""
    sorted_scores, sorted_ids = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[-1] = False  # The most likely token always stays.
    remove = remove_sorted.scatter(0, sorted_ids, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))
