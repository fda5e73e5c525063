"""UNet3D + motion modules against diffusers' UNetMotionModel (patched to the original's norms)."""

from __future__ import annotations

import gc

import pytest
import torch

from animatediff.checkpoints import motion_modules as mm
from animatediff.checkpoints.keymap import key_map
from animatediff.config import MotionConfig, UNetConfig
from animatediff.models.motion import MotionModule
from animatediff.models.unet import UNet3D
from conftest import TINY_MOTION, TINY_UNET
from reference import diffusers_motion_unet, diffusers_unet2d, make_original, random_weights_


def ours_from_reference(ref, cfg: UNetConfig, motion: MotionConfig | None) -> UNet3D:
    """Our model sharing the reference's tensors (no copy), through the diffusers motion-adapter table."""
    with torch.device("meta"):
        ours = UNet3D(cfg, motion)
    keys = list(ours.state_dict())
    mapping = key_map(keys, mm.diffusers_table([k for k in keys if ".motion_modules." in k]))
    state = ref.state_dict()
    missing = [v for v in mapping.values() if v not in state]
    assert not missing, missing[:5]
    ours.load_state_dict({k: state[v] for k, v in mapping.items()}, assign=True)
    return ours.eval()


def run_pair(
    ours, ref, frames: int, batch: int = 2, size=(16, 16), ctx_len: int = 7, ours_kw=None, ref_kw=None
) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = ours.config
    x = torch.randn(batch, cfg.in_channels, frames, *size)
    t = torch.tensor([10.0, 601.0][:batch])
    ctx = torch.randn(batch, ctx_len, cfg.cross_attention_dim)
    with torch.no_grad():
        a = ours(x, t, ctx, **(ours_kw or {}))
        b = ref(x, t, ctx.repeat_interleave(frames, 0), **(ref_kw or {})).sample
    return a, b


def rel_err(a, b) -> float:
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


@pytest.mark.parametrize("name", ["mm_sd_v15", "mm_sd_v15_v2", "v3_sd15_mm"])
def test_tiny_parity_each_version(name):
    motion = TINY_MOTION[name]
    ref = diffusers_motion_unet(TINY_UNET, motion)
    ours = ours_from_reference(ref, TINY_UNET, motion)
    make_original(ref, motion, frames=5)
    a, b = run_pair(ours, ref, frames=5)
    assert rel_err(a, b) < 1e-5


def test_diffusers_differs_from_original_where_we_patch_it():
    """The reference patches matter: unpatched diffusers pools the motion GroupNorm over frames."""
    motion = TINY_MOTION["mm_sd_v15_v2"]
    ref = diffusers_motion_unet(TINY_UNET, motion)
    ours = ours_from_reference(ref, TINY_UNET, motion)
    a, b = run_pair(ours, ref, frames=4)
    assert rel_err(a, b) > 1e-3


def test_image_unet_matches_diffusers_unet2d_per_frame():
    with torch.device("meta"):
        ref = diffusers_unet2d(TINY_UNET)
    random_weights_(ref)
    ours = ours_from_reference(ref, TINY_UNET, None)
    x = torch.randn(2, 4, 3, 16, 16)
    ctx = torch.randn(2, 7, TINY_UNET.cross_attention_dim)
    with torch.no_grad():
        a = ours(x, torch.tensor([3.0, 900.0]), ctx)
        for f in range(3):
            b = ref(x[:, :, f], torch.tensor([3.0, 900.0]), ctx).sample
            assert rel_err(a[:, :, f], b) < 1e-5


def test_latent_sizes_not_divisible_by_eight():
    motion = TINY_MOTION["mm_sd_v15_v2"]
    ref = diffusers_motion_unet(TINY_UNET, motion)
    ours = ours_from_reference(ref, TINY_UNET, motion)
    make_original(ref, motion, frames=2)
    a, b = run_pair(ours, ref, frames=2, size=(9, 13))
    assert a.shape == (2, 4, 2, 9, 13)
    assert rel_err(a, b) < 1e-5


def test_controlnet_style_residuals_match_reference():
    motion = TINY_MOTION["v3_sd15_mm"]
    ref = diffusers_motion_unet(TINY_UNET, motion)
    ours = ours_from_reference(ref, TINY_UNET, motion)
    make_original(ref, motion, frames=3)
    frames, b = 3, 2
    chs = [32, 32, 32, 32, 64, 64, 64, 64, 64, 64, 64, 64]
    sizes = [16, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    down = [torch.randn(b * frames, c, s, s) for c, s in zip(chs, sizes)]
    mid = torch.randn(b * frames, 64, 2, 2)
    a, r = run_pair(
        ours, ref, frames,
        ours_kw={"down_residuals": down, "mid_residual": mid},
        ref_kw={"down_block_additional_residuals": down, "mid_block_additional_residual": mid},
    )  # fmt: skip
    assert rel_err(a, r) < 1e-5


def test_fresh_motion_modules_leave_the_image_model_unchanged():
    """Zero-initialised proj_out: inserting untrained modules is the identity (the paper's init)."""
    image = UNet3D(TINY_UNET).eval()
    video = UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15_v2"]).eval()
    video.load_state_dict(image.state_dict(), strict=False)
    x, ctx = torch.randn(1, 4, 4, 16, 16), torch.randn(1, 5, 48)
    with torch.no_grad():
        assert torch.equal(image(x, 500, ctx), video(x, 500, ctx))


def test_per_frame_context_equals_broadcast_context():
    unet = UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15_v2"]).eval()
    x, ctx = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 5, 48)
    with torch.no_grad():
        a = unet(x, 500, ctx)
        b = unet(x, 500, ctx.repeat_interleave(3, 0))
    assert torch.allclose(a, b, atol=1e-5)


def test_v1_pools_norms_over_frames_v2_does_not():
    v1 = UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15"]).eval()
    x, ctx = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 5, 48)
    with torch.no_grad():
        whole = v1(x, 500, ctx)
        v1.set_motion_modules(None)  # the image model: every frame on its own
        alone = v1(x, 500, ctx)
    assert not torch.allclose(whole, alone, atol=1e-4)


def test_conv1d_ablation_replaces_each_temporal_attention_with_a_local_convolution():
    """The paper's ablation (sec. 5.3): about the parameters of the transformer, but each of its two
    kernel-3 layers sees only the neighbouring frames, so a change to one frame reaches two frames on, not 16."""
    attention, conv = (MotionModule(64, MotionConfig.from_name(n)).eval() for n in ("toy", "toy_conv1d"))
    count = [sum(p.numel() for p in m.parameters()) for m in (attention, conv)]
    # per slot, attention's q, k, v, out (4C^2 + C) against a convolution's 3C^2 + C: C^2 fewer, twice
    assert count[0] - count[1] == 2 * 64**2 and count[1] / count[0] > 0.9
    x = torch.randn(16, 64, 2, 2)  # one video of 16 frames, folded into the batch
    y = x.clone()
    y[0] += torch.randn(64, 2, 2)  # change the first frame only
    for module, reach in ((attention, 16), (conv, 3)):
        torch.nn.init.normal_(module.temporal_transformer.proj_out.weight, std=0.1)  # not the identity
        with torch.no_grad():
            changed = (module(y, 16) - module(x, 16) - (y - x)).abs().amax(dim=(1, 2, 3)) > 1e-6
        assert changed.tolist() == [True] * reach + [False] * (16 - reach)


def test_too_many_frames_is_a_clear_error():
    unet = UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15"]).eval()
    with pytest.raises(ValueError, match="25 frames exceed the motion module's 24"):
        unet(torch.randn(1, 4, 25, 8, 8), 1, torch.randn(1, 5, 48))


def test_parameter_counts_at_real_size():
    with torch.device("meta"):
        unet = UNet3D(UNetConfig.from_name("sd15"), MotionConfig.from_name("mm_sd_v15_v2"))
        v1 = UNet3D(UNetConfig.from_name("sd15"), MotionConfig.from_name("mm_sd_v15"))
    total = sum(p.numel() for p in unet.parameters())
    motion = sum(p.numel() for p in unet.motion_parameters().values())
    assert round(total / 1e6, 1) == 1312.7
    assert round(motion / 1e6, 1) == 453.2
    assert round(sum(p.numel() for p in v1.motion_parameters().values()) / 1e6, 1) == 417.1


@pytest.mark.parametrize("name", ["mm_sd_v15", "mm_sd_v15_v2"])
def test_real_size_parity(name):
    """SD1.5 channel sizes (1.3B parameters, shared between both models), small latents."""
    cfg, motion = UNetConfig.from_name("sd15"), MotionConfig.from_name(name)
    ref = diffusers_motion_unet(cfg, motion)
    ours = ours_from_reference(ref, cfg, motion)
    make_original(ref, motion, frames=4)
    a, b = run_pair(ours, ref, frames=4, batch=2, size=(8, 8), ctx_len=77)
    err = rel_err(a, b)
    del ref, ours
    gc.collect()
    assert err < 1e-4, err
