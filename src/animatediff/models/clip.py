"""CLIP text transformer (the SD1.5 text encoder: OpenAI's ViT-L/14 text tower).

Parameter names equal transformers' `CLIPTextModel.state_dict()` keys (`embeddings.token_embedding`,
`encoder.layers.{i}.self_attn.q_proj`, `final_layer_norm`, ...), so hub folders load after dropping their
`text_model.` prefix and SD1.5 single files after dropping `cond_stage_model.transformer.text_model.`.
The `position_ids` buffer those files carry is not a parameter here: positions are always 0..L-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import TextConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI's sigmoid approximation of GELU, which CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


def embedding(n: int, dim: int) -> nn.Embedding:
    """nn.Embedding with CLIP's init, skipped on the meta device (where a random init is a slow no-op)."""
    weight = torch.empty(n, dim)
    if weight.device.type != "meta":
        nn.init.normal_(weight, std=0.02)
    return nn.Embedding(n, dim, _weight=weight)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.token_embedding = embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = embedding(cfg.max_positions, cfg.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length, max_positions = ids.shape[1], self.position_embedding.num_embeddings
        if length > max_positions:
            raise ValueError(f"{length} tokens, but the text encoder takes at most {max_positions}")
        return self.token_embedding(ids) + self.position_embedding.weight[:length]


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention (CLIP's text tower reads left to right)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.heads = cfg.num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in qkv)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer layer."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_layers))


class CLIPTextModel(nn.Module):
    """Token ids [B, L] -> hidden states [B, L, hidden], the final-layer-normed output SD conditions on."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """`clip_skip` as the A1111 web UI means it ("Clip skip" / CLIP_stop_at_last_layers):

        1 is the normal output; k > 1 stops k - 1 layers before the last, i.e. takes transformers'
        `hidden_states[-k]`, and still applies `final_layer_norm` (NovelAI's anime models were trained
        on clip_skip=2). diffusers' `encode_prompt(clip_skip=c)` takes `hidden_states[-(c + 1)]` and
        applies the same norm, so its c is our k - 1 (diffusers' None or 0 is our 1).
        """
        layers = self.encoder.layers
        if not 1 <= clip_skip <= len(layers):
            raise ValueError(f"clip_skip must be in 1..{len(layers)}, got {clip_skip}")
        x = self.embeddings(ids)
        for layer in layers[: len(layers) - (clip_skip - 1)]:
            x = layer(x)
        return self.final_layer_norm(x)
