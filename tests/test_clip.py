"""Our CLIP text encoder against transformers' CLIPTextModel with the same random weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from animatediff.config import TextConfig
from animatediff.models.clip import CLIPTextModel
from conftest import TINY_TEXT
from reference import transformers_clip as reference

REAL_TEXT = TextConfig.from_name("clip-vit-large-patch14")


def ours_from(ref: transformers.CLIPTextModel, cfg: TextConfig) -> CLIPTextModel:
    model = CLIPTextModel(cfg).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    return model


def token_ids(cfg: TextConfig, batch: int = 2) -> torch.Tensor:
    """BOS, random tokens, EOS and EOS padding: the layout SD feeds the encoder."""
    ids = torch.randint(0, cfg.vocab_size - 2, (batch, cfg.max_positions))
    ids[:, 0] = cfg.vocab_size - 2
    ids[0, 20:] = cfg.eos_token_id
    ids[1, -1] = cfg.eos_token_id
    return ids


def max_error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    return (out - ref).abs().max().item(), 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("cfg", [TINY_TEXT, REAL_TEXT], ids=["tiny", "real"])
def test_matches_transformers(cfg):
    ref = reference(cfg)
    ours = ours_from(ref, cfg)
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert "embeddings.position_ids" not in ours.state_dict()
    ids = token_ids(cfg)
    with torch.no_grad():
        expected = ref(ids).last_hidden_state
        out = ours(ids)
    assert out.shape == (2, cfg.max_positions, cfg.hidden_size)
    err, tol = max_error(out, expected)
    print(f"{cfg.hidden_size}: max abs error {err:.2e} (tolerance {tol:.2e})")
    assert err <= tol


@pytest.mark.parametrize("cfg", [TINY_TEXT, REAL_TEXT], ids=["tiny", "real"])
def test_clip_skip_matches_transformers_hidden_states(cfg):
    ref = reference(cfg)
    ours = ours_from(ref, cfg)
    ids = token_ids(cfg)
    with torch.no_grad():
        states = ref(ids, output_hidden_states=True).hidden_states
        assert len(states) == cfg.num_layers + 1  # embeddings, then each layer's output
        for k in (2, cfg.num_layers):
            expected = ref.final_layer_norm(states[-k])
            err, tol = max_error(ours(ids, clip_skip=k), expected)
            print(f"{cfg.hidden_size}, clip_skip={k}: max abs error {err:.2e} (tolerance {tol:.2e})")
            assert err <= tol
        assert not torch.allclose(ours(ids, clip_skip=2), ours(ids))


def test_gelu_variant_matches_transformers():
    cfg = TextConfig(hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4, hidden_act="gelu")
    ref = reference(cfg)
    ids = token_ids(cfg)
    with torch.no_grad():
        err, tol = max_error(ours_from(ref, cfg)(ids), ref(ids).last_hidden_state)
    assert err <= tol


def test_bad_inputs_raise():
    model = CLIPTextModel(TINY_TEXT)
    ids = torch.zeros(1, 77, dtype=torch.long)
    for k in (0, TINY_TEXT.num_layers + 1):
        with pytest.raises(ValueError, match="clip_skip"):
            model(ids, clip_skip=k)
    with pytest.raises(ValueError, match="at most 77"):
        model(torch.zeros(1, 78, dtype=torch.long))


@pytest.mark.parametrize("dtype,rtol", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_half_precision(dtype, rtol):
    ref = reference(TINY_TEXT)
    model = ours_from(ref, TINY_TEXT)
    ids = token_ids(TINY_TEXT)
    with torch.no_grad():
        expected = model(ids)
        out = model.to(dtype)(ids)
    assert out.dtype == dtype
    err = (out.float() - expected).abs().max().item()
    print(f"{dtype}: max abs error {err:.2e} (ref max {expected.abs().max().item():.2f})")
    assert err <= rtol * max(1.0, expected.abs().max().item())
