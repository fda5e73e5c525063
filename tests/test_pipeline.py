"""The generation pipeline: parity with diffusers' AnimateDiffPipeline, determinism, LoRA scales,
long prompts, and the API's inputs."""

from __future__ import annotations

import copy

import pytest
import torch

from animatediff import AnimateDiff
from animatediff.checkpoints import LoraWeight
from animatediff.checkpoints.export import save_lora, save_motion_module, save_sd15
from animatediff.models.clip import CLIPTextModel
from animatediff.models.unet import UNet3D
from animatediff.models.vae import AutoencoderKL
from animatediff.sampling import NoiseSchedule
from conftest import TINY_MOTION, TINY_TEXT, TINY_UNET, TINY_VAE
from reference import (
    diffusers_motion_unet,
    diffusers_vae,
    make_original,
    random_weights_,
    transformers_clip,
    write_clip_vocab,
)

MOTION = TINY_MOTION["mm_sd_v15_v2"]


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def pipe() -> AnimateDiff:
    torch.manual_seed(0)
    unet = randomize(UNet3D(TINY_UNET, MOTION))
    vae = randomize(AutoencoderKL(TINY_VAE))
    text = randomize(CLIPTextModel(TINY_TEXT))
    return AnimateDiff(unet, vae, text, default_size=64)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """diffusers' AnimateDiffPipeline on random weights (motion norms patched to the original's)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler
    from transformers import CLIPTokenizer

    unet = diffusers_motion_unet(TINY_UNET, MOTION)
    with torch.device("meta"):
        vae = diffusers_vae(TINY_VAE)
    random_weights_(vae)
    text = transformers_clip(TINY_TEXT)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_vocab(tmp_path_factory.mktemp("tok")))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1,
                              clip_sample=False, set_alpha_to_one=True)  # fmt: skip
    ref = AnimateDiffPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, motion_adapter=None,
                              scheduler=scheduler)  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    return ref


def ours_from(ref) -> AnimateDiff:
    from animatediff.checkpoints import motion_modules as mm
    from animatediff.checkpoints.keymap import key_map

    unet = UNet3D(TINY_UNET, MOTION).eval()
    keys = list(unet.state_dict())
    mapping = key_map(keys, mm.diffusers_table([k for k in keys if ".motion_modules." in k]))
    state = ref.unet.state_dict()
    unet.load_state_dict({k: state[v] for k, v in mapping.items()})
    vae = AutoencoderKL(TINY_VAE).eval()
    vae.load_state_dict(ref.vae.state_dict())
    text = CLIPTextModel(TINY_TEXT).eval()
    text.load_state_dict(ref.text_encoder.state_dict())
    return AnimateDiff(unet, vae, text, default_size=64)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m_karras"])
def test_matches_diffusers_animatediff_pipeline(reference, sampler):
    """Same weights, same starting noise, same prompts: equal latents and equal frames."""
    from diffusers import DPMSolverMultistepScheduler

    ref = copy.copy(reference)
    if sampler == "dpmpp_2m_karras":
        ref.scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                                                    algorithm_type="dpmsolver++", use_karras_sigmas=True)  # fmt: skip
    ours = ours_from(ref)
    ref.unet = copy.deepcopy(ref.unet)
    make_original(ref.unet, MOTION, frames=6)
    noise = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    kwargs = dict(prompt="a red square on a blue background", negative_prompt="blurry, low quality", num_frames=6,
                  height=64, width=64, num_inference_steps=12, guidance_scale=7.5, latents=noise)  # fmt: skip
    with torch.no_grad():
        ref_latents = ref(**kwargs, output_type="latent").frames
        ref_frames = ref(**kwargs, output_type="pt").frames  # [B, F, 3, H, W] in [0, 1]
    args = dict(frames=6, height=64, width=64, steps=12, guidance=7.5, sampler=sampler, latents=noise, progress=False)
    latents = ours(kwargs["prompt"], kwargs["negative_prompt"], **args, output="latents")
    assert (latents - ref_latents).abs().max() <= 1e-5 * ref_latents.abs().max()
    video = ours(kwargs["prompt"], kwargs["negative_prompt"], **args)
    expected = (ref_frames[0].permute(0, 2, 3, 1) * 255).round()
    assert (torch.from_numpy(video.frames).float() - expected).abs().max() <= 1


def test_a_v_prediction_file_samples_as_diffusers_does_with_v_prediction(reference, tmp_path):
    """A model file that says it predicts v (as ComfyUI and kohya mark them) is sampled so, with no
    option; --prediction-type overrides the file either way."""
    from diffusers import DDIMScheduler

    ref = copy.copy(reference)
    ours = ours_from(ref)
    save_sd15(tmp_path / "v.safetensors", ours.unet, ours.vae, ours.text_encoder, prediction_type="v_prediction")
    save_motion_module(tmp_path / "mm.safetensors", ours.unet)
    ref.unet = copy.deepcopy(ref.unet)
    make_original(ref.unet, MOTION, frames=6)
    noise = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    kwargs = dict(prompt="a red square", num_frames=6, height=64, width=64, num_inference_steps=8,
                  guidance_scale=7.5, latents=noise, output_type="latent")  # fmt: skip
    args = dict(frames=6, height=64, width=64, steps=8, guidance=7.5, latents=noise, progress=False,
                output="latents")  # fmt: skip
    for override, predicts in ((None, "v_prediction"), ("epsilon", "epsilon")):
        ref.scheduler = DDIMScheduler.from_config(reference.scheduler.config, prediction_type=predicts)
        with torch.no_grad():
            want = ref(**kwargs).frames
        pipe = AnimateDiff.from_checkpoints(tmp_path / "v.safetensors", tmp_path / "mm.safetensors",
                                            prediction_type=override, device="cpu", dtype="float32")  # fmt: skip
        assert pipe.noise_schedule.prediction_type == predicts
        got = pipe("a red square", **args)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_same_seed_same_video_regardless_of_batch(pipe):
    args = dict(frames=4, steps=4, progress=False, output="latents")
    one = pipe("a red circle", seed=7, **args)
    again = pipe("a red circle", seed=7, **args)
    assert torch.equal(one, again)
    batch = pipe(["a blue square", "a red circle"], seed=[3, 7], **args)
    assert torch.allclose(batch[1:], one, atol=1e-5)
    assert not torch.allclose(batch[0:1], one, atol=1e-2)
    by_int = pipe(["a red circle", "a red circle"], seed=7, **args)  # an int seed counts up per video
    assert torch.allclose(by_int[0:1], one, atol=1e-5)


def test_ancestral_samplers_are_batch_invariant_too(pipe):
    args = dict(frames=3, steps=4, progress=False, output="latents", sampler="euler_a")
    one = pipe("x", seed=11, **args)
    batch = pipe(["y", "x"], seed=[5, 11], **args)
    assert torch.allclose(batch[1:], one, atol=1e-5)


def test_lora_scale_change_without_reload_equals_fresh_load(pipe, tmp_path):
    g = torch.Generator().manual_seed(0)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    layer = pipe.unet.get_submodule(name)
    weights = [LoraWeight("unet", name, torch.randn(4, layer.in_features, generator=g),
                          torch.randn(layer.out_features, 4, generator=g))]  # fmt: skip
    save_lora(tmp_path / "style.safetensors", weights, "kohya")
    args = dict(frames=3, steps=3, seed=1, progress=False, output="latents")
    base = pipe("a cat", **args)
    pipe.load_lora(tmp_path / "style.safetensors", 1.0, name="style")
    try:
        pipe.set_lora_scale("style", 0.4)
        changed = pipe("a cat", **args)
        fresh = copy.deepcopy(pipe)
        fresh.remove_lora("style")
        assert torch.equal(fresh("a cat", **args), base)
        fresh.load_lora(tmp_path / "style.safetensors", 0.4, name="style")
        assert torch.equal(fresh("a cat", **args), changed)
        assert not torch.allclose(changed, base)
    finally:
        pipe.remove_lora("style")
    assert torch.equal(pipe("a cat", **args), base)


def test_long_prompts_are_not_cut(pipe):
    words = "a red circle, " * 30  # 4 tokens each: 120 tokens, two chunks of 75
    assert len(pipe.tokenizer.tokenize(words)) == 120
    embeds = pipe.encode_prompt([words])
    assert embeds.shape[1] == 77 * 2
    changed_tail = pipe.encode_prompt([words + "zebra"])  # only the second chunk differs
    assert torch.equal(embeds[:, :77], changed_tail[:, :77])
    assert not torch.allclose(embeds[:, 77:], changed_tail[:, 77:])
    # the negative prompt is padded to the same number of chunks, so guidance can batch them
    video = pipe(words, "short negative", frames=2, steps=2, seed=0, progress=False, output="latents")
    assert torch.isfinite(video).all()


def test_prompt_embeds_and_latents_inputs(pipe):
    args = dict(frames=3, steps=3, progress=False, output="latents")
    noise = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    by_text = pipe("a green star", "ugly", latents=noise, **args)
    cond, uncond = pipe.encode_prompt(["a green star"]), pipe.encode_prompt(["ugly"])
    by_embeds = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise, **args)
    assert torch.equal(by_text, by_embeds)
    by_seed = pipe("a green star", "ugly", seed=4, **args)
    assert torch.equal(by_seed, by_text)  # a seed's noise is a float32 CPU draw of exactly this shape


def test_guidance_defaults_to_the_models_scale(pipe):
    """No guidance given: the pipeline's default_guidance (7.5 unless the model family says otherwise)."""
    args = dict(frames=2, steps=2, seed=3, progress=False)
    assert pipe.default_guidance == 7.5
    try:
        pipe.default_guidance = 3.0
        told = pipe("a", guidance=3.0, output="latents", **args)
        assert torch.equal(pipe("a", output="latents", **args), told)
        assert not torch.equal(pipe("a", guidance=7.5, output="latents", **args), told)
        assert pipe("a", **args).metadata["guidance"] == "3.0"
    finally:
        pipe.default_guidance = 7.5


def test_guidance_one_skips_the_negative_prompt(pipe):
    args = dict(frames=2, steps=2, seed=3, progress=False, output="latents", guidance=1.0)
    assert torch.equal(pipe("a", "something", **args), pipe("a", "else entirely", **args))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(height=60), "multiples of 8"),
        (dict(frames=0), "frames must be at least 1"),
        (dict(frames=33), "33 frames exceed what this motion module"),
        (dict(steps=0), "steps must be at least 1"),
        (dict(guidance=-1.0), "guidance must be 0 or more"),
        (dict(sampler="plms"), "unknown sampler"),
    ],
)
def test_impossible_requests_are_refused_up_front(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe("x", **{"progress": False, **kwargs})


def test_video_output_shape_and_metadata(pipe):
    video = pipe("a red circle", frames=5, steps=2, seed=9, progress=False, fps=12)
    assert video.frames.shape == (5, 64, 64, 3)
    assert video.fps == 12 and video.metadata["seed"] == "9"


def test_v1_motion_module_pools_norms_in_the_pipeline_too(pipe):
    unet = copy.deepcopy(pipe.unet)
    unet.motion_config = TINY_MOTION["mm_sd_v15"]  # same weights, v1 behaviour
    v1 = AnimateDiff(unet, pipe.vae, pipe.text_encoder, default_size=64)
    args = dict(frames=3, steps=2, seed=2, progress=False, output="latents")
    assert not torch.allclose(v1("a", **args), pipe("a", **args))


def test_noise_schedule_is_animatediffs_linear_by_default(pipe):
    assert pipe.noise_schedule == NoiseSchedule(beta_schedule="linear")


def test_half_precision_vae_overflow_is_redone_in_float32(pipe, monkeypatch):
    """A VAE that overflows in half precision must not give black frames silently."""
    half = copy.deepcopy(pipe)
    half.vae.to(torch.bfloat16)
    real_decode = half.vae.decode

    def overflowing(z, **kw):
        out = real_decode(z, **kw)
        return out.fill_(float("inf")) if z.dtype != torch.float32 else out

    monkeypatch.setattr(half.vae, "decode", overflowing)
    latents = torch.randn(4, 3, 8, 8)
    with pytest.warns(UserWarning, match="overflowed"):
        frames = half.decode(latents, chunk=2)
    assert torch.isfinite(frames).all()
    assert next(half.vae.parameters()).dtype == torch.bfloat16  # back to half after the retry
    # the retry runs the bf16-rounded weights in float32: equal to the fp32 VAE up to that rounding
    assert torch.allclose(frames, pipe.decode(latents), atol=2e-3)


def test_offload_gives_the_same_video(pipe):
    offloaded = AnimateDiff(pipe.unet, pipe.vae, pipe.text_encoder, default_size=64, offload=True)
    args = dict(frames=3, steps=2, seed=5, progress=False, output="latents")
    assert torch.equal(offloaded("a", **args), pipe("a", **args))
