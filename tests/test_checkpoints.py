"""Checkpoint formats: files we write are read by diffusers' own converters, and files in diffusers'
layouts are read by ours, with equal outputs; every key is consumed or reported; bad files fail clearly."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import safetensors.torch
import torch

from animatediff.checkpoints import CheckpointError, load, load_into
from animatediff.checkpoints.export import save_motion_module, save_sd15, save_vae
from animatediff.checkpoints.io import save_file
from animatediff.checkpoints.keymap import invert, key_map
from animatediff.checkpoints.ldm_sd15 import UNET_PREFIX, unet_table, vae_table
from animatediff.config import MotionConfig, TextConfig, UNetConfig, VAEConfig
from animatediff.models.clip import CLIPTextModel
from animatediff.models.unet import UNet3D
from animatediff.models.vae import AutoencoderKL
from conftest import TINY_MOTION, TINY_TEXT, TINY_UNET, TINY_VAE
from reference import (
    diffusers_motion_unet,
    diffusers_unet2d,
    diffusers_unet2d_config,
    diffusers_vae,
    make_original,
    random_weights_,
    transformers_clip,
)


def build(component, loaded, model_type=None, *args):
    """Our model for one component of a loaded file, built on meta and filled from the file."""
    c = loaded.components[component]
    model_type = model_type or {"unet": UNet3D, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}[component]
    with torch.device("meta"):
        model = model_type(c.config, *args)
    load_into(model, c)
    return model.eval()


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def rel_err(a, b) -> float:
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


# Small configs whose every field is readable from shapes (SD1.5's 32 groups, 8 heads, 64-wide text
# heads), for files without our metadata: .ckpt files and other tools' safetensors.
PROBE_UNET = UNetConfig(block_out_channels=(32, 64, 64, 64), cross_attention_dim=48)
PROBE_VAE = VAEConfig(block_out_channels=(32, 64, 64, 64))
PROBE_TEXT = TextConfig(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=2)


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(1)
    return randomize(UNet3D(TINY_UNET)), randomize(AutoencoderKL(TINY_VAE)), randomize(CLIPTextModel(TINY_TEXT))


@pytest.fixture(scope="module")
def probe_models():
    torch.manual_seed(2)
    return randomize(UNet3D(PROBE_UNET)), randomize(AutoencoderKL(PROBE_VAE)), randomize(CLIPTextModel(PROBE_TEXT))


def unet_out(unet, frames: int = 1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, frames, 16, 16, generator=g)
    ctx = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([5.0, 700.0]), ctx)


def vae_out(vae):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        post = vae.encode(x)
        return post.mean, vae.decode(post.mean)


def ids():
    return torch.randint(0, 49406, (2, 77), generator=torch.Generator().manual_seed(0))


# -- SD1.5 single files --------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "metadata"), [(".safetensors", True), (".safetensors", False), (".ckpt", False)])
def test_ldm_single_file_reads_back_in_diffusers_and_ours(tmp_path, tiny_models, probe_models, suffix, metadata):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    unet, vae, text = tiny_models if metadata else probe_models
    path = tmp_path / f"model{suffix}"
    save_sd15(path, unet, vae, text)
    raw = safetensors.torch.load_file(path) if suffix == ".safetensors" else torch.load(path, weights_only=True)
    if not metadata:
        save_file(raw, path)  # as other tools write it: configs must come from shapes
    loaded = load(path)
    assert (loaded.kind, loaded.format) == ("sd15", "ldm")
    assert loaded.unused == []
    assert loaded.components["unet"].config == unet.config
    assert loaded.components["text_encoder"].config == text.config

    ref_unet = UNet2DConditionModel(**diffusers_unet2d_config(unet.config)).eval()
    ref_unet.load_state_dict(convert_ldm_unet_checkpoint(raw, diffusers_unet2d_config(unet.config)), strict=True)
    ref_vae = diffusers_vae(vae.config)
    ref_vae.load_state_dict(convert_ldm_vae_checkpoint(raw, ref_vae.config), strict=True)
    ref_text = transformers_clip(text.config)
    clip = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(raw).items()}
    ref_text.load_state_dict({k: v for k, v in clip.items() if "position_ids" not in k}, strict=True)

    ours_unet, ours_vae, ours_text = (build(c, loaded) for c in ("unet", "vae", "text_encoder"))
    x = torch.randn(2, 4, 16, 16)
    ctx = torch.randn(2, 7, unet.config.cross_attention_dim)
    with torch.no_grad():
        a = ours_unet(x[:, :, None], torch.tensor([5.0, 700.0]), ctx)[:, :, 0]
        b = ref_unet(x, torch.tensor([5.0, 700.0]), ctx).sample
        assert rel_err(a, b) < 1e-5
        mean, dec = vae_out(ours_vae)
        img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        assert rel_err(mean, ref_vae.encode(img).latent_dist.mean) < 1e-5
        assert rel_err(dec, ref_vae.decode(mean).sample) < 1e-5
        assert rel_err(ours_text(ids()), ref_text(ids()).last_hidden_state) < 1e-5
    # and exactly our own weights back
    for a, b in zip(ours_unet.state_dict().values(), unet.state_dict().values()):
        assert torch.equal(a, b)


def test_ldm_fp16_ema_and_schedule_buffers(tmp_path, tiny_models):
    unet, vae, text = tiny_models
    path = tmp_path / "fp16.safetensors"
    save_sd15(path, unet, vae, text, dtype=torch.float16)
    tensors = safetensors.torch.load_file(path)
    meta = safetensors.safe_open(str(path), "pt").metadata()
    ema_unet = randomize(UNet3D(TINY_UNET))
    ema = {o: "model_ema." + "".join(t.split(".")[1:])
           for o, t in key_map(list(unet.state_dict()), unet_table(TINY_UNET), UNET_PREFIX).items()}  # fmt: skip
    for ours, flat in ema.items():
        tensors[flat] = ema_unet.state_dict()[ours].half()
    tensors["alphas_cumprod"] = torch.rand(1000)
    tensors["model_ema.num_updates"] = torch.tensor(7)
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(tensors, path, meta)

    loaded = load(path)
    assert loaded.unused == []
    assert any("EMA" in n for n in loaded.notes)
    regular = build("unet", loaded)
    assert regular.conv_in.weight.dtype == torch.float32
    assert torch.equal(regular.conv_in.weight, unet.conv_in.weight.half().float())
    with_ema = build("unet", load(path, use_ema=True))
    assert torch.equal(with_ema.conv_in.weight, ema_unet.conv_in.weight.half().float())
    assert "float16" in loaded.describe()


def test_ldm_file_without_vae_or_text_encoder(tmp_path, tiny_models):
    unet, _, _ = tiny_models
    save_sd15(tmp_path / "unet_only.safetensors", unet)
    loaded = load(tmp_path / "unet_only.safetensors")
    assert set(loaded.components) == {"unet"}
    assert any("no VAE" in n for n in loaded.notes)


@pytest.mark.parametrize(
    ("how", "expect"),
    [("ours", "v_prediction"), ("v_pred key", "v_prediction"), ("modelspec v", "v_prediction"),
     ("modelspec epsilon", "epsilon"), ("silent", None), ("modelspec sample", None)],
)  # fmt: skip
def test_prediction_type_is_read_from_the_file(tmp_path, tiny_models, how, expect):
    """What a single file says its UNet predicts: ComfyUI's empty `v_pred` tensor, or kohya's ModelSpec
    metadata. Files that say nothing are left to the default (epsilon) or --prediction-type."""
    path = tmp_path / "model.safetensors"
    save_sd15(path, *tiny_models, prediction_type="v_prediction" if how == "ours" else None)
    tensors = safetensors.torch.load_file(path)
    meta = safetensors.safe_open(str(path), "pt").metadata()
    if how == "ours":
        assert meta["modelspec.prediction_type"] == "v" and tensors["v_pred"].numel() == 0
    elif how == "v_pred key":
        tensors["v_pred"] = torch.tensor([])
    elif how.startswith("modelspec"):
        meta["modelspec.prediction_type"] = how.split()[1]
    save_file(tensors, path, meta)
    loaded = load(path)
    assert loaded.prediction_type == expect
    assert loaded.unused == []  # the sentinel is no stray key
    assert any("v-prediction" in n for n in loaded.notes) == (expect == "v_prediction")
    assert any("'sample'" in n for n in loaded.notes) == (how == "modelspec sample")


def test_full_size_tables_agree_with_diffusers_converter():
    """Every key of the real SD1.5 UNet and VAE maps as diffusers' own converter maps it."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet_cfg, vae_cfg = UNetConfig.from_name("sd15"), VAEConfig.from_name("sd-vae-ft-mse")
    with torch.device("meta"):
        unet_keys = list(UNet3D(unet_cfg).state_dict())
        vae_keys = list(AutoencoderKL(vae_cfg).state_dict())
    ldm = {v: k for k, v in key_map(unet_keys, unet_table(unet_cfg), UNET_PREFIX).items()}
    back = convert_ldm_unet_checkpoint(ldm, diffusers_unet2d_config(unet_cfg))
    assert back == {k: k for k in unet_keys}
    # Each tensor carries its own index, so we can see where the converter put it.
    mapping = key_map(vae_keys, vae_table(vae_cfg), "first_stage_model.")
    vae_ldm = {v: torch.full((1, 1, 1, 1), float(i)) for i, v in enumerate(mapping.values())}
    back = convert_ldm_vae_checkpoint(vae_ldm, _meta(lambda: diffusers_vae(vae_cfg)).config)
    assert {k: int(t.flatten()[0]) for k, t in back.items()} == {k: i for i, k in enumerate(mapping)}
    assert invert(unet_table(unet_cfg))  # one-to-one


# -- diffusers folders and standalone VAEs ----------------------------------------------------------


def test_diffusers_pipeline_folder(tmp_path):
    from diffusers import DDIMScheduler

    ref_unet = random_weights_(_meta(lambda: diffusers_unet2d(TINY_UNET)))
    ref_vae = random_weights_(_meta(lambda: diffusers_vae(TINY_VAE)))
    ref_text = transformers_clip(TINY_TEXT)
    ref_unet.save_pretrained(tmp_path / "unet")
    ref_vae.save_pretrained(tmp_path / "vae")
    ref_text.save_pretrained(tmp_path / "text_encoder")
    assert load(tmp_path).prediction_type is None  # no scheduler/ folder: nothing said
    DDIMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    loaded = load(tmp_path)
    assert (loaded.kind, loaded.format, loaded.prediction_type) == ("sd15", "diffusers", "v_prediction")
    assert loaded.unused == []
    unet, vae, text = (build(c, loaded) for c in ("unet", "vae", "text_encoder"))
    x, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 48)
    with torch.no_grad():
        assert rel_err(unet(x[:, :, None], 9, ctx)[:, :, 0], ref_unet(x, 9, ctx).sample) < 1e-5
        z = torch.randn(1, 4, 4, 4)
        assert rel_err(vae.decode(z), ref_vae.decode(z).sample) < 1e-5
        assert rel_err(text(ids()), ref_text(ids()).last_hidden_state) < 1e-5


def _meta(fn):
    with torch.device("meta"):
        return fn()


@pytest.mark.parametrize("layout", ["diffusers", "diffusers-old-attention", "ldm"])
def test_standalone_vae_files(tmp_path, probe_models, layout):
    _, vae, _ = probe_models
    path = tmp_path / ("vae.safetensors" if layout != "ldm" else "vae-ft-mse-840000-ema-pruned.ckpt")
    save_vae(path, vae, layout="ldm" if layout == "ldm" else "diffusers")
    if layout == "diffusers-old-attention":  # the original sd-vae-ft-mse diffusers upload
        old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        t = safetensors.torch.load_file(path)
        for new, name in old.items():
            for part in ("encoder", "decoder"):
                for p in ("weight", "bias"):
                    t[f"{part}.mid_block.attentions.0.{name}.{p}"] = t.pop(f"{part}.mid_block.attentions.0.{new}.{p}")
        save_file(t, path)  # no metadata: shapes alone must tell
    loaded = load(path)
    assert loaded.kind == "vae" and loaded.unused == []
    ours = build("vae", loaded)
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(ours.decode(z), vae.decode(z))


# -- motion modules --------------------------------------------------------------------------------


def tiny_motion_unet(name: str, seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    return randomize(UNet3D(TINY_UNET, TINY_MOTION[name]))


@pytest.mark.parametrize(("name", "version"), [("mm_sd_v15", "v1"), ("mm_sd_v15_v2", "v2"), ("v3_sd15_mm", "v3")])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_motion_module_original_layout_round_trip(tmp_path, name, version, suffix):
    unet = tiny_motion_unet(name)
    path = tmp_path / f"motion{suffix}"
    save_motion_module(path, unet)
    loaded = load(path)
    assert (loaded.kind, loaded.format, loaded.version) == ("motion_module", "animatediff", version)
    assert loaded.unused == []
    c = loaded.components["motion_module"]
    if suffix == ".safetensors":  # our metadata records even the tiny heads/groups
        assert c.config == TINY_MOTION[name]
    else:  # a plain pickle: what the keys and shapes tell
        expected = MotionConfig.from_name(name)
        assert (c.config.max_frames, c.config.mid_block) == (expected.max_frames, expected.mid_block)
    assert all(torch.equal(c.state_dict()[k], v) for k, v in unet.motion_state_dict().items())


def test_motion_module_version_from_keys_without_our_metadata(tmp_path):
    """Released files carry no metadata: mid block -> v2, table of 24 -> v1, of 32 -> v3."""
    for name, version in [("mm_sd_v15", "v1"), ("mm_sd_v15_v2", "v2"), ("v3_sd15_mm", "v3")]:
        state = tiny_motion_unet(name).motion_state_dict()
        torch.save(state, tmp_path / "plain.ckpt")
        loaded = load(tmp_path / "plain.ckpt")
        assert loaded.version == version
        assert loaded.config.max_frames == {"v1": 24, "v2": 32, "v3": 32}[version]
        assert loaded.config.inflated_groupnorm == (version != "v1")


def test_motion_module_without_position_table_needs_a_version(tmp_path):
    state = {k: v for k, v in tiny_motion_unet("v3_sd15_mm").motion_state_dict().items() if "pos_encoder" not in k}
    save_file(state, tmp_path / "motion.safetensors")
    with pytest.raises(CheckpointError, match="--motion-version"):
        load(tmp_path / "motion.safetensors")
    assert load(tmp_path / "motion.safetensors", motion_version="v3").version == "v3"
    save_file(state, tmp_path / "v3_sd15_mm.safetensors")
    hinted = load(tmp_path / "v3_sd15_mm.safetensors")
    assert hinted.version == "v3" and any("file name" in n for n in hinted.notes)
    save_file(state, tmp_path / "mm_sd_v14.safetensors")
    assert load(tmp_path / "mm_sd_v14.safetensors").version == "v1"


def test_motion_module_wrapped_prefixed_and_with_extras(tmp_path):
    """v3 files carry `animatediff_config`; training checkpoints wrap a whole DDP UNet in state_dict."""
    unet = tiny_motion_unet("mm_sd_v15_v2")
    full = {f"module.{k}": v for k, v in unet.state_dict().items()}
    torch.save({"state_dict": full, "global_step": 10, "animatediff_config": ""}, tmp_path / "checkpoint.ckpt")
    loaded = load(tmp_path / "checkpoint.ckpt")
    assert loaded.kind == "motion_module" and loaded.version == "v2"
    assert any("non-motion-module keys ignored" in n for n in loaded.notes)
    got = loaded.components["motion_module"].state_dict()
    assert set(got) == set(unet.motion_state_dict())


def test_motion_module_diffusers_layouts_match_diffusers_outputs(tmp_path):
    from diffusers import MotionAdapter

    motion = TINY_MOTION["mm_sd_v15_v2"]
    ref = diffusers_motion_unet(TINY_UNET, motion)
    adapter = MotionAdapter(
        block_out_channels=TINY_UNET.block_out_channels, motion_layers_per_block=2, motion_num_attention_heads=2,
        motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=True,
    )  # fmt: skip
    adapter_state = {k: v for k, v in ref.state_dict().items() if ".motion_modules." in k}
    adapter.load_state_dict(adapter_state, strict=True)
    adapter.save_pretrained(tmp_path / "adapter")
    save_file(adapter_state, tmp_path / "adapter.safetensors")

    base = {k: v for k, v in ref.state_dict().items() if ".motion_modules." not in k}
    for source in (tmp_path / "adapter", tmp_path / "adapter.safetensors"):
        loaded = load(source)
        assert (loaded.kind, loaded.format, loaded.version) == ("motion_module", "diffusers", "v2")
        assert loaded.unused == []
        c = replace(loaded.components["motion_module"], config=motion)  # heads/groups: tiny, not in key shapes
        unet = UNet3D(TINY_UNET, motion).eval()
        unet.load_state_dict(base, strict=False)
        load_into(unet, c)
        ours = unet_out(unet, frames=4)
        reference = _patched_copy(ref, motion, frames=4)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 4, 16, 16, generator=g)
        ctx = torch.randn(2, 7, 48, generator=g)
        with torch.no_grad():
            expected = reference(x, torch.tensor([5.0, 700.0]), ctx.repeat_interleave(4, 0)).sample
        assert rel_err(ours, expected) < 1e-5


def _patched_copy(ref, motion, frames):
    import copy

    ref = copy.deepcopy(ref)
    make_original(ref, motion, frames)
    return ref


def test_our_motion_module_file_loads_in_diffusers_with_equal_outputs(tmp_path):
    """Our original-layout export, read by diffusers' own converter into its MotionAdapter."""
    from diffusers import MotionAdapter, UNetMotionModel
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    motion = TINY_MOTION["v3_sd15_mm"]
    unet = tiny_motion_unet("v3_sd15_mm")
    save_motion_module(tmp_path / "mm.safetensors", unet)
    converted = convert_animatediff_checkpoint_to_diffusers(safetensors.torch.load_file(tmp_path / "mm.safetensors"))
    adapter = MotionAdapter(
        block_out_channels=TINY_UNET.block_out_channels, motion_layers_per_block=2, motion_num_attention_heads=2,
        motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=False,
    )  # fmt: skip
    result = adapter.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == [] and all("pos_embed" in k for k in result.missing_keys)
    base = diffusers_unet2d(TINY_UNET)
    base.load_state_dict({k: v for k, v in unet.state_dict().items() if ".motion_modules." not in k})
    ref = UNetMotionModel.from_unet2d(base, adapter).eval()
    make_original(ref, motion, frames=4)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 4, 16, 16, generator=g), torch.randn(2, 7, 48, generator=g)
    with torch.no_grad():
        expected = ref(x, torch.tensor([5.0, 700.0]), ctx.repeat_interleave(4, 0)).sample
    assert rel_err(unet_out(unet, frames=4), expected) < 1e-5


def test_motion_module_for_another_unet_is_a_shape_error(tmp_path):
    unet = tiny_motion_unet("mm_sd_v15_v2")
    save_motion_module(tmp_path / "mm.safetensors", unet)
    loaded = load(tmp_path / "mm.safetensors")
    with torch.device("meta"):
        big = UNet3D(UNetConfig.from_name("sd15"), MotionConfig.from_name("mm_sd_v15_v2"))
    with pytest.raises(CheckpointError, match=r"has shape .* the model expects"):
        load_into(big, loaded.components["motion_module"])


# -- bad files -------------------------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load(tmp_path / "missing.safetensors")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load(tmp_path / "empty.ckpt")
    torch.save({"a": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        load(tmp_path / "evil.ckpt")
    with open(tmp_path / "evil2.ckpt", "wb") as f:
        pickle.dump({"a": Evil()}, f)
    with pytest.raises(CheckpointError):
        load(tmp_path / "evil2.ckpt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable"):
        load(tmp_path / "notes.txt")
    save_file({"foo.bar": torch.zeros(2), "foo.baz": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match=r"unrecognised checkpoint .*foo.*closest known kind"):
        load(tmp_path / "odd.safetensors")
    save_file({"conditioner.embedders.0.transformer.x": torch.zeros(1)}, tmp_path / "sdxl.safetensors")
    with pytest.raises(CheckpointError, match="SDXL"):
        load(tmp_path / "sdxl.safetensors")
    old_conv1d = {"down_blocks.0.motion_modules.0.temporal_conv.convs.0.weight": torch.zeros(1)}
    save_file(old_conv1d, tmp_path / "conv1d.safetensors")  # the ablation as `toy train` wrote it before 12-06
    with pytest.raises(CheckpointError, match=r"layout was retired .* toy train --only conv1d"):
        load(tmp_path / "conv1d.safetensors")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="not a diffusers model"):
        load(tmp_path / "folder")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_files(tmp_path, tiny_models, suffix):
    unet, _, _ = tiny_models
    path = tmp_path / f"model{suffix}"
    save_sd15(path, unet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        loaded = load(path)
        build("unet", loaded)


def test_unknown_extra_keys_are_reported(tmp_path, tiny_models):
    unet, vae, text = tiny_models
    save_sd15(tmp_path / "m.safetensors", unet, vae, text)
    t = safetensors.torch.load_file(tmp_path / "m.safetensors")
    meta = safetensors.safe_open(str(tmp_path / "m.safetensors"), "pt").metadata()
    t["model.diffusion_model.something_new.weight"] = torch.zeros(3)
    save_file(t, tmp_path / "m.safetensors", meta)
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.unused == ["model.diffusion_model.something_new.weight"]
    assert "1 unused keys" in loaded.describe()


def test_missing_tensor_is_named(tmp_path, tiny_models):
    unet, vae, text = tiny_models
    save_sd15(tmp_path / "m.safetensors", unet, vae, text)
    t = safetensors.torch.load_file(tmp_path / "m.safetensors")
    meta = safetensors.safe_open(str(tmp_path / "m.safetensors"), "pt").metadata()
    del t["model.diffusion_model.out.2.weight"]
    save_file(t, tmp_path / "m.safetensors", meta)
    with pytest.raises(CheckpointError, match=r"1 missing \(conv_out.weight\)"):
        build("unet", load(tmp_path / "m.safetensors"))


def test_text_encoder_config_from_real_sized_shapes(tmp_path):
    """Shape probes at SD1.5's real text encoder size give the real config."""
    from animatediff.checkpoints.shapes import text_config

    model = _meta(lambda: CLIPTextModel(TextConfig.from_name("clip-vit-large-patch14")))

    class Shapes:  # a stand-in file: shapes only
        def __init__(self, state):
            self.state = state

        def keys(self):
            return list(self.state)

        def shape(self, k):
            return tuple(self.state[k].shape)

    probe = Shapes({f"p.{k}": v for k, v in model.state_dict().items()})
    assert text_config(probe, "p.") == TextConfig.from_name("clip-vit-large-patch14")


def test_our_diffusers_layout_motion_export_loads_in_diffusers(tmp_path):
    from diffusers import MotionAdapter

    unet = tiny_motion_unet("mm_sd_v15_v2")
    save_motion_module(tmp_path / "adapter.safetensors", unet, layout="diffusers")
    adapter = MotionAdapter(
        block_out_channels=TINY_UNET.block_out_channels, motion_layers_per_block=2, motion_num_attention_heads=2,
        motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=True,
    )  # fmt: skip
    adapter.load_state_dict(safetensors.torch.load_file(tmp_path / "adapter.safetensors"), strict=True)
    loaded = load(tmp_path / "adapter.safetensors")
    assert (loaded.format, loaded.version, loaded.unused) == ("diffusers", "v2", [])
    got = loaded.components["motion_module"].state_dict()
    assert all(torch.equal(got[k], v) for k, v in unet.motion_state_dict().items())
