"""LoRA files merged by us against diffusers' own LoRA loader (kohya and peft formats), exact unmerge,
and the AnimateDiff processor-style files (MotionLoRA, v3 domain adapter)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from animatediff.checkpoints import CheckpointError, LoraSet, load_lora
from animatediff.checkpoints.export import save_lora
from animatediff.checkpoints.io import save_file
from animatediff.checkpoints.keymap import translate
from animatediff.checkpoints.ldm_sd15 import unet_table
from animatediff.models.clip import CLIPTextModel
from animatediff.models.unet import UNet3D
from conftest import TINY_MOTION, TINY_TEXT, TINY_UNET, TINY_VAE
from reference import diffusers_unet2d, diffusers_vae, random_weights_, transformers_clip, write_clip_vocab

RANK = 4


def lora_targets(model: nn.Module, text: bool) -> dict[str, nn.Module]:
    """Attention and feed-forward linears, transformer proj_in (1x1 conv) and ResNet conv1 (3x3 LoCon)."""
    out = {}
    for name, m in model.named_modules():
        if (text and isinstance(m, nn.Linear)) or (not text and ".motion_modules." not in name and (
            (isinstance(m, nn.Linear) and ("attn" in name or "ff.net" in name))
            or (isinstance(m, nn.Conv2d) and (name.endswith("proj_in") or name.endswith("conv1")))
        )):
            out[name] = m
    return out


def random_pair(weight: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if weight.dim() == 4:
        return (torch.randn(RANK, *weight.shape[1:], generator=g) * 0.1,
                torch.randn(weight.shape[0], RANK, 1, 1, generator=g) * 0.1)  # fmt: skip
    return torch.randn(RANK, weight.shape[1], generator=g) * 0.1, torch.randn(weight.shape[0], RANK, generator=g) * 0.1


def make_lora(unet: nn.Module, text: nn.Module, style: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    sd = {}
    ldm = unet_table(TINY_UNET)
    for name, m in lora_targets(unet, text=False).items():
        down, up = random_pair(m.weight, g)
        if style == "peft":
            sd[f"unet.{name}.lora_A.weight"], sd[f"unet.{name}.lora_B.weight"] = down, up
            continue
        path = translate(name, ldm) if style == "kohya-ldm" else name
        base = "lora_unet_" + path.replace(".", "_")
        sd[f"{base}.lora_down.weight"], sd[f"{base}.lora_up.weight"] = down, up
        sd[f"{base}.alpha"] = torch.tensor(2.0)
    for name, m in lora_targets(text, text=True).items():
        down, up = random_pair(m.weight, g)
        if style == "peft":
            sd[f"text_encoder.text_model.{name}.lora_A.weight"] = down
            sd[f"text_encoder.text_model.{name}.lora_B.weight"] = up
            continue
        base = "lora_te_text_model_" + name.replace(".", "_")
        sd[f"{base}.lora_down.weight"], sd[f"{base}.lora_up.weight"] = down, up
        sd[f"{base}.alpha"] = torch.tensor(2.0)
    return sd


@pytest.fixture(scope="module")
def reference_pipe(tmp_path_factory):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    with torch.device("meta"):
        unet, vae = diffusers_unet2d(TINY_UNET), diffusers_vae(TINY_VAE)
    random_weights_(unet)
    random_weights_(vae)
    text = transformers_clip(TINY_TEXT)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_vocab(tmp_path_factory.mktemp("tok")))
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def ours_like(pipe) -> tuple[UNet3D, CLIPTextModel]:
    unet = UNet3D(TINY_UNET).eval()
    unet.load_state_dict(pipe.unet.state_dict())
    text = CLIPTextModel(TINY_TEXT).eval()
    text.load_state_dict(pipe.text_encoder.state_dict())
    return unet, text


@pytest.mark.parametrize("style", ["kohya", "kohya-ldm", "peft"])
def test_lora_merge_equals_diffusers_fuse(tmp_path, reference_pipe, style):
    pipe = copy.deepcopy(reference_pipe)
    unet, text = ours_like(pipe)
    sd = make_lora(unet, text, style)
    save_file(sd, tmp_path / "style.safetensors")

    # diffusers reads LDM-style kohya names only for SDXL; for SD1.5 it is given the same tensors under
    # diffusers-style names (our LDM table itself is checked against diffusers in test_checkpoints).
    reference_sd = make_lora(unet, text, "kohya") if style == "kohya-ldm" else sd
    pipe.load_lora_weights({k: v.clone() for k, v in reference_sd.items()})
    pipe.fuse_lora(lora_scale=0.7)
    pipe.unload_lora_weights()

    lora, kind = load_lora(tmp_path / "style.safetensors", {"unet": unet, "text_encoder": text})
    assert kind == "lora" and lora.unused == []
    assert len(lora.weights) == len(lora_targets(unet, False)) + len(lora_targets(text, True))
    LoraSet(unet).add("style", [w for w in lora.weights if w.component == "unet"], 0.7)
    LoraSet(text).add("style", [w for w in lora.weights if w.component == "text_encoder"], 0.7)
    for ours, ref in ((unet, pipe.unet), (text, pipe.text_encoder)):
        ref_state = ref.state_dict()
        for k, v in ours.state_dict().items():
            assert torch.allclose(v, ref_state[k], atol=1e-6, rtol=1e-5), k


def test_scale_changes_and_exact_unmerge(tmp_path, reference_pipe):
    unet, text = ours_like(reference_pipe)
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    save_file(make_lora(unet, text, "kohya"), tmp_path / "a.safetensors")
    lora, _ = load_lora(tmp_path / "a.safetensors", {"unet": unet})
    weights = [w for w in lora.weights if w.component == "unet"]
    loras = LoraSet(unet)
    loras.add("a", weights, 1.0)
    at_one = {k: v.clone() for k, v in unet.state_dict().items()}
    loras.set_scale("a", 0.3)
    fresh = UNet3D(TINY_UNET).eval()
    fresh.load_state_dict(base)
    LoraSet(fresh).add("a", weights, 0.3)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in unet.state_dict().items())
    loras.set_scale("a", 1.0)
    assert all(torch.equal(v, at_one[k]) for k, v in unet.state_dict().items())
    loras.set_scale("a", 0.0)
    assert all(torch.equal(v, base[k]) for k, v in unet.state_dict().items())
    loras.set_scale("a", 0.5)
    loras.remove("a")
    assert all(torch.equal(v, base[k]) for k, v in unet.state_dict().items())
    assert loras.originals == {}


def test_two_loras_stack(tmp_path, reference_pipe):
    unet, text = ours_like(reference_pipe)
    save_file(make_lora(unet, text, "kohya"), tmp_path / "a.safetensors")
    save_file(make_lora(unet, text, "peft"), tmp_path / "b.safetensors")
    a, _ = load_lora(tmp_path / "a.safetensors", {"unet": unet})
    b, _ = load_lora(tmp_path / "b.safetensors", {"unet": unet})
    w = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    w0 = unet.get_submodule(w).weight.detach().clone()
    loras = LoraSet(unet)
    loras.add("a", a.weights, 0.5)
    loras.add("b", b.weights, -1.0)
    da = next(x for x in a.weights if x.module == w).delta()
    db = next(x for x in b.weights if x.module == w).delta()
    assert torch.allclose(unet.get_submodule(w).weight, w0 + 0.5 * da - db, atol=1e-6)


def processor_file(unet: nn.Module, motion: bool, g: torch.Generator) -> dict[str, torch.Tensor]:
    """MotionLoRA / domain-adapter layout: `<attention>.processor.to_q_lora.down.weight`."""
    sd = {}
    for name, m in unet.named_modules():
        if not hasattr(m, "to_q") or (".motion_modules." in name) != motion:
            continue
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            layer = m.to_out[0] if proj == "to_out" else getattr(m, proj)
            sd[f"{name}.processor.{proj}_lora.down.weight"] = torch.randn(RANK, layer.in_features, generator=g) * 0.1
            sd[f"{name}.processor.{proj}_lora.up.weight"] = torch.randn(layer.out_features, RANK, generator=g) * 0.1
    return sd


@pytest.mark.parametrize("kind", ["motion_lora", "domain_adapter"])
def test_animatediff_processor_loras(tmp_path, kind):
    unet = UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15_v2"]).eval()
    motion = kind == "motion_lora"
    sd = processor_file(unet, motion, torch.Generator().manual_seed(0))
    torch.save({"state_dict": sd, "animatediff_config": ""}, tmp_path / "lora.ckpt")
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    lora, got_kind = load_lora(tmp_path / "lora.ckpt", {"unet": unet})
    assert got_kind == kind and lora.unused == []
    assert len(lora.weights) == len(sd) // 2
    LoraSet(unet).add(kind, lora.weights, 0.8)
    for key in sd:
        if not key.endswith("down.weight"):
            continue
        module = key.replace(".processor.", ".").removesuffix("_lora.down.weight").replace("to_out", "to_out.0")
        up = sd[key.removesuffix("down.weight") + "up.weight"]
        expected = before[f"{module}.weight"] + 0.8 * up @ sd[key]
        assert torch.allclose(unet.state_dict()[f"{module}.weight"], expected, atol=1e-6)
    changed = {k for k in before if not torch.equal(before[k], unet.state_dict()[k])}
    assert all((".motion_modules." in k) == motion for k in changed)


def test_lora_export_layouts_read_back(tmp_path, reference_pipe):
    unet, text = ours_like(reference_pipe)
    save_file(make_lora(unet, text, "kohya"), tmp_path / "a.safetensors")
    lora, _ = load_lora(tmp_path / "a.safetensors", {"unet": unet, "text_encoder": text})
    for layout in ("kohya", "peft"):
        save_lora(tmp_path / f"{layout}.safetensors", lora.weights, layout)
        again, _ = load_lora(tmp_path / f"{layout}.safetensors", {"unet": unet, "text_encoder": text})
        ours = {(w.component, w.module): w for w in lora.weights}
        for w in again.weights:
            assert torch.allclose(w.delta(), ours[(w.component, w.module)].delta(), atol=1e-7)
        assert len(again.weights) == len(lora.weights)


def test_lora_for_another_model_is_refused(tmp_path):
    unet = UNet3D(TINY_UNET).eval()
    name = "lora_unet_input_blocks_4_1_transformer_blocks_9_attn1_to_q"  # an SDXL-only block
    sd = {f"{name}.lora_down.weight": torch.zeros(4, 1280), f"{name}.lora_up.weight": torch.zeros(1280, 4)}
    save_file(sd, tmp_path / "xl.safetensors")
    with pytest.raises(CheckpointError, match="matches none of the model's layers"):
        load_lora(tmp_path / "xl.safetensors", {"unet": unet})
    bad = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 7, 1, 1),
           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4, 1, 1)}  # fmt: skip
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="different model"):
        load_lora(tmp_path / "bad.safetensors", {"unet": unet})
    save_file({"x.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError):
        load_lora(tmp_path / "other.safetensors", {"unet": unet})


def test_our_kohya_export_loads_in_diffusers(tmp_path, reference_pipe):
    """A LoRA we write (e.g. from our trainer) is read by diffusers with the same merged weights."""
    pipe = copy.deepcopy(reference_pipe)
    unet, text = ours_like(pipe)
    save_file(make_lora(unet, text, "kohya"), tmp_path / "in.safetensors")
    lora, _ = load_lora(tmp_path / "in.safetensors", {"unet": unet, "text_encoder": text})
    save_lora(tmp_path / "ours.safetensors", lora.weights, "kohya")
    pipe.load_lora_weights(str(tmp_path / "ours.safetensors"))
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    LoraSet(unet).add("x", [w for w in lora.weights if w.component == "unet"], 1.0)
    ref_state = pipe.unet.state_dict()
    assert all(torch.allclose(v, ref_state[k], atol=1e-6, rtol=1e-5) for k, v in unet.state_dict().items())
