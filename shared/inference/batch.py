"""A batched KV cache that requests join and leave between decode steps.

Each request is prefilled alone (batch of one, no padding), then its cache rows are appended to
the running batch. Rows of different lengths are left-padded with zeros, masked out by the
attention mask, and every row gets its own position ids, as `generate` does for a left-padded
batch. A finished row is removed with `keep`, which also drops padding columns no row needs.

Tested on CPU with the tiny GLM: greedy tokens of a request are identical alone and in a batch
of eight, and equal to `model.generate` (tests/shared/test_engine.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from shared.inference.served import ServedModel


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(
                f"cache layer {type(layer).__name__} has no key/value tensors; batching supports "
                "full-attention models only"
            )
        layers.append((keys, values))
    return layers


class DecodeBatch:
    """The cache, attention mask and next input token of the requests decoding together on one model."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.device = served.model.device
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, cached tokens], 0 on left padding.
        self.next_tokens: torch.Tensor | None = None  # [rows], the input of the next step.

    @property
    def size(self) -> int:
        return 0 if self.next_tokens is None else int(self.next_tokens.shape[0])

    def _new_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
        cache = DynamicCache(config=self.served.model.config)
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)
        return cache

    def _forward(self, **inputs) -> torch.Tensor:
        cache = inputs.pop("cache")
        inputs[self.served.cache_argument] = cache
        if self.served.accepts_logits_to_keep:
            inputs["logits_to_keep"] = 1
        return self.served.model(use_cache=True, **inputs).logits[:, -1, :]

    @torch.inference_mode()
    def prefill(self, prompt_ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
        """Run one prompt alone; return its cache and the logits of its next token."""
        cache = DynamicCache(config=self.served.model.config)
        logits = self._forward(input_ids=torch.tensor([prompt_ids], device=self.device), cache=cache)
        return cache, logits[0]

    def add(self, cache: DynamicCache, first_token: int) -> None:
        """Append a prefilled request as the last row; `first_token` is its next input."""
        new_layers = _layers(cache)
        new_length = new_layers[0][0].shape[2]
        new_mask = torch.ones(1, new_length, dtype=torch.long, device=self.device)
        token = torch.tensor([first_token], device=self.device)
        if self.cache is None or self.mask is None or self.next_tokens is None:
            self.cache, self.mask, self.next_tokens = cache, new_mask, token
            return
        length = max(self.mask.shape[1], new_length)
        merged = [
            (
                torch.cat([_pad_left(keys, length, 2), _pad_left(new_keys, length, 2)]),
                torch.cat([_pad_left(values, length, 2), _pad_left(new_values, length, 2)]),
            )
            for (keys, values), (new_keys, new_values) in zip(_layers(self.cache), new_layers, strict=True)
        ]
        self.cache = self._new_cache(merged)
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(new_mask, length, 1)])
        self.next_tokens = torch.cat([self.next_tokens, token])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (indices into the batch, in order) and drop padding no row needs."""
        if not rows:
            self.cache = self.mask = self.next_tokens = None
            return
        if self.cache is None or self.mask is None or self.next_tokens is None:
            raise RuntimeError("keep() called on an empty batch")
        index = torch.tensor(rows, device=self.device)
        mask = self.mask[index]
        first_used = int(mask.any(dim=0).nonzero()[0])
        self.mask = mask[:, first_used:]
        self.next_tokens = self.next_tokens[index]
        self.cache = self._new_cache(
            [
                (keys[index, :, first_used:], values[index, :, first_used:])
                for keys, values in _layers(self.cache)
            ]
        )

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """Feed every row its next token; return the logits of the following one, [rows, vocab]."""
        if self.cache is None or self.mask is None or self.next_tokens is None:
            raise RuntimeError("step() called on an empty batch")
        rows = self.size
        positions = self.mask.sum(dim=1, keepdim=True)
        mask = F.pad(self.mask, (0, 1), value=1)
        logits = self._forward(
            input_ids=self.next_tokens[:, None], attention_mask=mask, position_ids=positions, cache=self.cache
        )
        self.mask = mask
        assert logits.shape[0] == rows
        return logits

    def set_next(self, tokens: list[int]) -> None:
        self.next_tokens = torch.tensor(tokens, dtype=torch.long, device=self.device)
