"""Prompt encoding: text -> CLIP hidden states, with prompts longer than 75 tokens kept whole.

CLIP reads 77 positions (start + 75 tokens + end). A longer prompt is split into 75-token chunks,
each wrapped in start/end tokens and encoded on its own, and the hidden states are concatenated
along the sequence: the convention users know from the A1111 web UI. Cross-attention takes any
sequence length, so nothing is cut. The prompt and negative prompt of one batch get the same number
of chunks (the shorter padded with empty chunks) so they can be batched for guidance.
"""

from __future__ import annotations

import torch

from .models.clip import CLIPTextModel
from .models.tokenizer import CLIPTokenizer

CHUNK = 75


def token_chunks(tokenizer: CLIPTokenizer, prompt: str) -> list[list[int]]:
    ids = tokenizer.tokenize(prompt)
    return [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]


def prompt_ids(tokenizer: CLIPTokenizer, prompts: list[str], min_chunks: int = 1) -> tuple[torch.Tensor, int]:
    """Token ids [B * chunks, 77] (each chunk: start, up to 75 tokens, end, end-padding) and `chunks`."""
    chunked = [token_chunks(tokenizer, p) for p in prompts]
    n = max(min_chunks, *(len(c) for c in chunked))
    rows = [tokenizer.chunk_ids(chunk, CHUNK)[0] for c in chunked for chunk in c + [[]] * (n - len(c))]
    return torch.stack(rows), n


def encode_ids(text_encoder: CLIPTextModel, ids: torch.Tensor, batch: int, clip_skip: int = 1) -> torch.Tensor:
    """Hidden states of every chunk in one call, re-joined per prompt: [B, 77 * chunks, hidden]."""
    device = next(text_encoder.parameters()).device
    hidden = text_encoder(ids.to(device), clip_skip=clip_skip)
    return hidden.reshape(batch, -1, hidden.shape[-1])


@torch.no_grad()
def encode_prompts(
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    prompts: list[str],
    clip_skip: int = 1,
    min_chunks: int = 1,
) -> torch.Tensor:
    """[B, 77 * chunks, hidden] for a batch of prompts (all padded to the same number of chunks)."""
    ids, _ = prompt_ids(tokenizer, prompts, min_chunks)
    return encode_ids(text_encoder, ids, len(prompts), clip_skip)


def count_chunks(tokenizer: CLIPTokenizer, prompts: list[str]) -> int:
    return max(len(token_chunks(tokenizer, p)) for p in prompts)
