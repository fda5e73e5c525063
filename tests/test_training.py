"""Training on tiny models and synthetic clips: every stage learns, only what should change changes,
a killed run resumes exactly, two processes equal one, and the files come out in the usual layouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml

from animatediff import Video
from animatediff.checkpoints import load, load_lora
from animatediff.checkpoints.export import save_motion_module, save_sd15
from animatediff.models.clip import CLIPTextModel
from animatediff.models.unet import UNet3D
from animatediff.models.vae import AutoencoderKL
from animatediff.prompts import encode_ids, prompt_ids
from animatediff.training.config import Config, ConfigError, load_config
from animatediff.training.loop import Trainer
from conftest import TINY_MOTION, TINY_TEXT, TINY_UNET, TINY_VAE

COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230), "yellow": (240, 220, 40)}


def moving_square(color, direction: int, frames: int = 24, size: int = 48) -> np.ndarray:
    video = np.full((frames, size, size, 3), 20, np.uint8)
    for f in range(frames):
        x = 8 + direction * f if direction >= 0 else size - 20 + direction * f
        x = int(np.clip(x, 0, size - 12))
        video[f, 18:30, x : x + 12] = color
    return video


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    clips = root / "clips"
    clips.mkdir()
    for i, (name, color) in enumerate(COLORS.items()):
        for d, word in ((1, "right"), (-1, "left")):
            stem = clips / f"{name}-{word}-{i}"
            Video(moving_square(color, d), fps=8).save(stem.with_suffix(".mp4"))
            stem.with_suffix(".txt").write_text(f"a {name} square moving {word}")
    torch.manual_seed(0)
    unet = UNet3D(TINY_UNET)
    save_sd15(root / "base.safetensors", unet, AutoencoderKL(TINY_VAE), CLIPTextModel(TINY_TEXT))
    motion = UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15_v2"])
    with torch.no_grad():  # as if trained: a fresh module's zero output would hide any MotionLoRA
        for p in motion.motion_parameters().values():
            p.normal_(0, 0.05)
    save_motion_module(root / "mm.safetensors", motion)
    return {"root": root, "clips": clips, "base": root / "base.safetensors", "mm": root / "mm.safetensors"}


def config(world, tmp_path, stage: str, **overrides) -> dict:
    raw = {
        "stage": stage,
        "model": str(world["base"]),
        "output_dir": str(tmp_path / "run"),
        "motion_preset": "mm_sd_v15_v2",
        "data": {"videos": str(world["clips"]), "frames": 4, "stride": 2, "size": 32, "workers": 0},
        "train": {"steps": 6, "batch_size": 2, "lr": 1e-3, "seed": 3, "lora_rank": 4},
        "checkpoint": {"every": 0},
        "logging": {"every": 1, "tensorboard": False},
    }
    if stage == "motion_lora":
        raw["motion_module"] = str(world["mm"])
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return raw


def write(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def fixed_loss(trainer: Trainer) -> float:
    """The loss on the first batches with the randomness of step 0: comparable before and after."""
    step = trainer.step
    trainer.step = 0
    batch = next(iter(torch.utils.data.DataLoader(trainer.data, batch_size=4, collate_fn=trainer_collate())))
    with torch.no_grad():
        loss = trainer.loss(batch, 0).item()
    trainer.step = step
    return loss


def trainer_collate():
    from animatediff.training.data import collate

    return collate


STAGES = ["image", "image_lora", "adapter", "motion", "motion_lora"]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_learns_and_changes_only_its_parameters(world, tmp_path, stage):
    from animatediff.training.config import _build, validate

    # low-rank and zero-initialised adapters learn slower: give them a larger step
    lr = 1e-3 if stage == "image" else 1e-2
    cfg = validate(_build(Config, config(world, tmp_path, stage, train={"steps": 40, "lr": lr}), ""))
    trainer = Trainer(cfg, resume="none")
    frozen = {
        f"{name}.{k}": v.clone()
        for name, model in (("unet", trainer.models.unet), ("vae", trainer.models.vae),
                            ("text_encoder", trainer.models.text_encoder))
        for k, v in model.state_dict().items()
        if f"{name}.{k}" not in trainer.models.trainable and ".down.weight" not in k and ".up.weight" not in k
    }  # fmt: skip
    before_trainable = {k: v.detach().clone() for k, v in trainer.models.trainable.items()}
    before = fixed_loss(trainer)
    path = trainer.run()
    after = fixed_loss(trainer)
    assert after < before * 0.9, (before, after)
    for name, model in (("unet", trainer.models.unet), ("vae", trainer.models.vae),
                        ("text_encoder", trainer.models.text_encoder)):  # fmt: skip
        for k, v in model.state_dict().items():
            key = f"{name}.{k.replace('.base.', '.')}"
            if key in frozen:
                assert torch.equal(v, frozen[key]), key
    assert all(not torch.equal(v, before_trainable[k]) for k, v in trainer.models.trainable.items()
               if not k.endswith("down.weight"))  # fmt: skip
    loaded = load(path)
    expected = {"image": "sd15", "image_lora": "lora", "adapter": "domain_adapter", "motion": "motion_module",
                "motion_lora": "motion_lora"}[stage]  # fmt: skip
    assert loaded.kind == expected
    rows = (Path(cfg.output_dir) / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 41


def test_motion_stage_output_loads_here_and_in_diffusers(world, tmp_path):
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    raw = config(world, tmp_path, "motion", train={"steps": 3})
    path = Trainer(validate_raw(raw), resume="none").run()
    ours = load(path).components["motion_module"].state_dict()
    converted = convert_animatediff_checkpoint_to_diffusers(safetensors.torch.load_file(path))
    adapter = MotionAdapter(block_out_channels=TINY_UNET.block_out_channels, motion_layers_per_block=2,
                            motion_num_attention_heads=2, motion_norm_num_groups=8)  # fmt: skip
    result = adapter.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == [] and all("pos_embed" in k for k in result.missing_keys)
    assert len(ours) == len(converted) + 2 * sum(1 for k in converted if k.endswith("attn1.to_q.weight"))


def validate_raw(raw: dict) -> Config:
    from animatediff.training.config import _build, validate

    return validate(_build(Config, raw, ""))


def test_kill_and_resume_reproduces_the_uninterrupted_run(world, tmp_path):
    straight = config(world, tmp_path / "a", "motion", train={"steps": 8}, checkpoint={"every": 2, "keep": 2})
    # the resumed run reads with workers, which fetch batches ahead of the ones its checkpoints count
    resumed = config(world, tmp_path / "b", "motion", train={"steps": 8}, checkpoint={"every": 2, "keep": 2},
                     data={"workers": 2})  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cmd = [sys.executable, "-m", "animatediff.train"]
    r = subprocess.run([*cmd, write(straight, tmp_path / "a.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([*cmd, write(resumed, tmp_path / "b.yaml")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    target = Path(resumed["output_dir"]) / "checkpoints" / "step-0000004"
    deadline = time.time() + 240
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (Path(resumed["output_dir"]) / "motion_module.safetensors").exists()
    r = subprocess.run([*cmd, tmp_path / "b.yaml"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr + r.stdout
    a = safetensors.torch.load_file(Path(straight["output_dir"]) / "motion_module.safetensors")
    b = safetensors.torch.load_file(Path(resumed["output_dir"]) / "motion_module.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(p.name for p in (Path(resumed["output_dir"]) / "checkpoints").iterdir())
    assert kept == ["step-0000006", "step-0000008"]


def test_the_position_in_the_data_moves_on_across_epochs_and_from_an_epochs_end(world, tmp_path):
    from animatediff.training.data import batches_from

    trainer = Trainer(validate_raw(config(world, tmp_path, "motion")), resume="none")
    n = len(trainer.data)
    per_epoch = n // 2  # 2 clips a batch
    trainer.epoch, trainer.batch_in_epoch = 0, per_epoch  # a checkpoint taken as epoch 0 ended
    batches = trainer.micro_batches()
    expected = [*batches_from(n, 3, 1, 0, 2), *batches_from(n, 3, 2, 0, 2)]
    for k, indices in enumerate(expected, start=1):
        assert next(batches)["index"].tolist() == indices
        assert (trainer.epoch, trainer.batch_in_epoch) == (1 + k // per_epoch, k % per_epoch)


@pytest.mark.parametrize(("strategy", "stage"), [("ddp", "motion_lora"), ("fsdp", "motion")])
def test_two_processes_equal_one_with_the_same_global_batch(world, tmp_path, strategy, stage):
    one = config(world, tmp_path / "one", stage, train={"steps": 3, "batch_size": 4})
    two = config(world, tmp_path / "two", stage, train={"steps": 3, "batch_size": 4, "ema_decay": 0.5},
                 checkpoint={"every": 2}, distributed=strategy)  # fmt: skip
    one["train"]["ema_decay"] = 0.5
    for raw, name in ((one, "one"), (two, "two")):
        (tmp_path / name).mkdir()
        write(raw, tmp_path / f"{name}.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "animatediff.train", tmp_path / "one.yaml"], capture_output=True,
                       text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        "29517", "-m", "animatediff.train", tmp_path / "two.yaml"], capture_output=True, text=True,
                       env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    name = "motion_lora.safetensors" if stage == "motion_lora" else "motion_module.safetensors"
    a = safetensors.torch.load_file(Path(one["output_dir"]) / name)
    b = safetensors.torch.load_file(Path(two["output_dir"]) / name)
    assert a.keys() == b.keys()
    # equal up to the order of float sums in the gradient all-reduce, which Adam's normalisation
    # amplifies for tiny gradients (measured: 4.6e-6 DDP/MotionLoRA, 2.4e-5 FSDP/motion; updates ~1e-2)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a), max((a[k] - b[k]).abs().max() for k in a)
    assert (Path(two["output_dir"]) / "checkpoints" / "step-0000002" / "states.pt").exists()


def test_motion_lora_output_applies_with_the_pipeline(world, tmp_path):
    from animatediff import AnimateDiff

    path = Trainer(validate_raw(config(world, tmp_path, "motion_lora", train={"steps": 3})), resume="none").run()
    pipe = AnimateDiff.from_checkpoints(world["base"], world["mm"], device="cpu", dtype="float32")
    base = pipe("a red square", frames=4, height=32, width=32, steps=2, seed=1, progress=False, output="latents")
    pipe.load_lora(path, 1.0, name="trained")
    assert pipe.lora_kinds["trained"] == "motion_lora"
    moved = pipe("a red square", frames=4, height=32, width=32, steps=2, seed=1, progress=False, output="latents")
    assert not torch.allclose(base, moved)
    lora, kind = load_lora(path, {"unet": pipe.unet})
    assert kind == "motion_lora" and all(".motion_modules." in w.module for w in lora.weights)


def test_ema_validation_and_warmup(world, tmp_path):
    raw = config(world, tmp_path, "motion", train={"steps": 4, "ema_decay": 0.9, "warmup_steps": 2},
                 validation={"every": 2, "prompts": ["a red square moving right"], "seeds": [1], "steps": 2,
                             "frames": 4, "size": 32})  # fmt: skip
    trainer = Trainer(validate_raw(raw), resume="none")
    assert trainer.sched.get_last_lr()[0] == pytest.approx(0.5e-3)
    path = trainer.run()
    gifs = sorted((Path(raw["output_dir"]) / "validation").glob("*/*.gif"))
    assert [g.parent.name for g in gifs] == ["step-0000002", "step-0000004"]
    exported = load(path).components["motion_module"].state_dict()
    live = {k.removeprefix("unet."): v for k, v in trainer.models.trainable.items()}
    ema = {k.removeprefix("unet."): v for k, v in trainer.ema.items()}
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert any(not torch.equal(exported[k], live[k]) for k in live)


def test_config_errors_are_named(tmp_path, world):
    raw = config(world, tmp_path, "motion")
    raw["train"]["lerning_rate"] = 1.0
    with pytest.raises(ConfigError, match="unknown key 'lerning_rate' in train; did you mean 'lr'"):
        load_config(write(raw, tmp_path / "typo.yaml"))
    raw = config(world, tmp_path, "motion_lora")
    del raw["motion_module"]
    with pytest.raises(ConfigError, match="needs motion_module"):
        load_config(write(raw, tmp_path / "no_mm.yaml"))
    with pytest.raises(ConfigError, match="needs stage, output_dir"):
        load_config(write({"model": "x"}, tmp_path / "empty.yaml"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {"videos": "{empty}"}}, "no video"),
        ({"data": {"videos": "{uncaptioned}"}}, "caption"),
        ({"output_dir": "/proc/forbidden/run"}, "output folder"),
        ({"model": "{missing}"}, "no such file"),
        ({"train": {"batch_size": 3, "grad_accum": 2}}, "not divisible"),
    ],
)
def test_cli_errors(world, tmp_path, change, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "uncaptioned").mkdir()
    Video(moving_square(COLORS["red"], 1), fps=8).save(tmp_path / "uncaptioned" / "clip.mp4")
    subs = {"empty": tmp_path / "empty", "uncaptioned": tmp_path / "uncaptioned", "missing": tmp_path / "x.ckpt"}
    raw = config(world, tmp_path, "motion")
    for key, value in change.items():
        if isinstance(value, dict):
            value = {k: str(v).format(**subs) for k, v in value.items()}
            raw[key].update({k: int(v) if v.isdigit() else v for k, v in value.items()})
        else:
            raw[key] = value.format(**subs)
    r = subprocess.run([sys.executable, "-m", "animatediff", "train", write(raw, tmp_path / "c.yaml")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_latent_cache_trains_like_the_uncached_run(world, tmp_path):
    """Within the first epoch (the clips the cache holds) the runs are the same."""
    plain = config(world, tmp_path / "plain", "motion", train={"steps": 3})
    cached = config(world, tmp_path / "cached", "motion", train={"steps": 3},
                    data={"cache_dir": str(tmp_path / "cache")})  # fmt: skip
    a = safetensors.torch.load_file(Trainer(validate_raw(plain), resume="none").run())
    b = safetensors.torch.load_file(Trainer(validate_raw(cached), resume="none").run())
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert len(list((tmp_path / "cache").glob("0*.safetensors"))) == 8
    other = config(world, tmp_path / "other", "motion", data={"cache_dir": str(tmp_path / "cache"), "size": 64})
    with pytest.raises(ValueError, match="cache made from other data"):
        Trainer(validate_raw(other), resume="none")


def test_latent_cache_notices_data_rewritten_under_the_same_names(world, tmp_path):
    import shutil

    clips = shutil.copytree(world["clips"], tmp_path / "clips")
    raw = config(world, tmp_path, "motion", data={"videos": str(clips), "cache_dir": str(tmp_path / "cache")})
    Trainer(validate_raw(raw), resume="none")
    Trainer(validate_raw(raw), resume="none")  # the same data: the cache serves
    caption = sorted(clips.glob("*.txt"))[0]
    caption.write_text(caption.read_text() + " slowly")
    with pytest.raises(ValueError, match="cache made from other data"):
        Trainer(validate_raw(raw), resume="none")


def _variant(path: Path, text_seed: int | None = None, perturb: str | None = None) -> Path:
    """The world's base (same seed, same weights) with a fresh text encoder, or one VAE part nudged."""
    torch.manual_seed(0)
    unet, vae, text = UNet3D(TINY_UNET), AutoencoderKL(TINY_VAE), CLIPTextModel(TINY_TEXT)
    if text_seed is not None:
        torch.manual_seed(text_seed)
        text = CLIPTextModel(TINY_TEXT)
    if perturb:
        with torch.no_grad():
            next(getattr(vae, perturb).parameters()).add_(0.01)
    save_sd15(path, unet, vae, text)
    return path


def test_latent_cache_is_keyed_on_the_vae_encoder_and_text_encoder_weights(world, tmp_path, monkeypatch):
    """A base with another text encoder but the same VAE reuses the latents and encodes only the captions
    again (and trains as uncached); another decoder changes nothing; another encoder is refused."""
    cache = {"cache_dir": str(tmp_path / "cache")}
    same, base = (safetensors.torch.load_file(f) for f in (_variant(tmp_path / "same.safetensors"), world["base"]))
    assert same.keys() == base.keys() and all(torch.equal(same[k], base[k]) for k in base)
    Trainer(validate_raw(config(world, tmp_path / "a", "motion", train={"steps": 2}, data=cache)), resume="none").run()
    means = {f.name: safetensors.torch.load_file(f)["mean"] for f in (tmp_path / "cache").glob("0*.safetensors")}

    other_text = _variant(tmp_path / "text.safetensors", text_seed=7)
    plain = config(world, tmp_path / "plain", "motion", model=str(other_text), train={"steps": 3})
    expected = safetensors.torch.load_file(Trainer(validate_raw(plain), resume="none").run())

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached latents were encoded again")

    monkeypatch.setattr(AutoencoderKL, "encode", no_encoding)
    cached = config(world, tmp_path / "b", "motion", model=str(other_text), train={"steps": 3}, data=cache)
    got = safetensors.torch.load_file(Trainer(validate_raw(cached), resume="none").run())
    assert all(torch.allclose(expected[k], got[k], atol=1e-5) for k in expected)
    for name, mean in means.items():
        entry = safetensors.torch.load_file(tmp_path / "cache" / name)
        assert torch.equal(entry["mean"], mean)
    decoder = _variant(tmp_path / "decoder.safetensors", text_seed=7, perturb="decoder")
    Trainer(validate_raw(config(world, tmp_path / "c", "motion", model=str(decoder), data=cache)), resume="none")
    monkeypatch.undo()
    encoder = _variant(tmp_path / "encoder.safetensors", text_seed=7, perturb="encoder")
    with pytest.raises(ValueError, match="cache made from other data or another VAE"):
        Trainer(validate_raw(config(world, tmp_path / "d", "motion", model=str(encoder), data=cache)), resume="none")


def test_an_interrupted_cache_build_is_checked_and_its_captions_encoded_again(world, tmp_path, monkeypatch):
    import animatediff.training.loop as loop

    def dies_after_two(items, **kwargs):
        for n, item in enumerate(items):
            if n == 2:
                raise KeyboardInterrupt
            yield item

    cache = tmp_path / "cache"

    def run(model, out: str, other: str | None = None) -> Trainer:
        data = {"cache_dir": other or str(cache), **({"frames": 1} if other else {})}
        stage = "image" if other else "motion"
        return Trainer(validate_raw(config(world, tmp_path / out, stage, model=str(model), data=data)), resume="none")

    monkeypatch.setattr(loop, "tqdm", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(world["base"], "a")
    monkeypatch.undo()
    assert len(list(cache.glob("0*.safetensors"))) == 2
    with pytest.raises(ValueError, match="another VAE"):  # the half-built cache knows its VAE already
        run(_variant(tmp_path / "encoder.safetensors", perturb="encoder"), "b")
    other_text = _variant(tmp_path / "text.safetensors", text_seed=7)
    trainer = run(other_text, "c")
    m = trainer.models  # every stored caption, the two from the interrupted build too, is this encoder's
    for entry in (trainer.samples[i] for i in range(len(trainer.samples))):
        ids = prompt_ids(m.tokenizer, [entry["caption"]])[0]
        assert torch.equal(entry["text"], encode_ids(m.text_encoder, ids, 1)[0])
    # a base trained from scratch (its text encoder learns) on an interrupted cache: served as well
    monkeypatch.setattr(loop, "tqdm", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(world["base"], "f", other=str(tmp_path / "cache2"))
    monkeypatch.undo()
    image = config(world, tmp_path / "g", "image", train={"train_text_encoder": True, "steps": 1},
                   data={"frames": 1, "cache_dir": str(tmp_path / "cache2")})  # fmt: skip
    Trainer(validate_raw(image), resume="none").run()
    (cache / "cache.json").write_text('{"fingerprint": "0123"}')
    with pytest.raises(ValueError, match="older animatediff"):
        run(other_text, "e")


def test_a_cache_topped_up_by_a_learning_text_encoder_is_re_encoded_for_the_next(world, tmp_path):
    """Entries missing from a cache that encoder A made are filled in by a base trained with encoder
    B learning (which does not need the stored text): the cache now mixes A's and B's captions, so it
    records no text encoder, and the next run that reads the text (with A) encodes every caption again."""
    cache = tmp_path / "cache"
    data = {"frames": 1, "cache_dir": str(cache)}

    def trainer(model, out: str, **train) -> Trainer:
        return Trainer(validate_raw(config(world, tmp_path / out, "image", model=str(model), data=data,
                                           train=train)), resume="none")  # fmt: skip

    trainer(world["base"], "a")
    made = json.loads((cache / "cache.json").read_text())["text"]
    entries = sorted(cache.glob("0*.safetensors"))
    for f in entries[:2]:
        f.unlink()
    trainer(_variant(tmp_path / "text.safetensors", text_seed=7), "b", train_text_encoder=True)
    assert json.loads((cache / "cache.json").read_text())["text"] is None
    again = trainer(world["base"], "c")
    assert json.loads((cache / "cache.json").read_text())["text"] == made
    m = again.models
    for entry in (again.samples[i] for i in range(len(again.samples))):
        ids = prompt_ids(m.tokenizer, [entry["caption"]])[0]
        assert torch.equal(entry["text"], encode_ids(m.text_encoder, ids, 1)[0])


def test_latent_cache_serves_an_image_stage_that_trains_the_text_encoder(world, tmp_path):
    """Training a base from scratch: latents come from the cache, captions are encoded live by the
    text encoder that learns; the result is the uncached run's."""
    image = {"train_text_encoder": True, "steps": 3}
    plain = config(world, tmp_path / "plain", "image", train=image, data={"frames": 1})
    cached = config(world, tmp_path / "cached", "image", train=image,
                    data={"frames": 1, "cache_dir": str(tmp_path / "cache")})  # fmt: skip
    a = safetensors.torch.load_file(Trainer(validate_raw(plain), resume="none").run())
    b = safetensors.torch.load_file(Trainer(validate_raw(cached), resume="none").run())
    before = safetensors.torch.load_file(world["base"])
    text = [k for k in a if k.startswith("cond_stage_model.")]
    assert text and any(not torch.equal(a[k], before[k]) for k in text)  # the text encoder did learn
    # Adam turns the rounding of batched vs per-sample VAE encoding into up to +-lr per step on weights
    # with tiny gradients: compare the runs' difference with what training changed, over all weights
    norm = lambda d: torch.cat([v.flatten() for v in d.values()]).norm()  # noqa: E731
    update = norm({k: a[k] - before[k] for k in a})
    assert norm({k: a[k] - b[k] for k in a}) < 0.01 * update


def test_min_snr_weights_are_the_diffusers_recipe():
    """Min-SNR-gamma as diffusers' training scripts compute it (compute_snr, then min(snr, gamma) / snr
    or / (snr + 1)), on the linear schedule the trainer uses."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from animatediff.sampling import NoiseSchedule
    from animatediff.training.loop import loss_weights

    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")
    steps = torch.arange(0, 1000, 7)
    snr = compute_snr(ref, steps)
    alpha_bar = NoiseSchedule(beta_schedule="linear").alphas_cumprod()[steps]
    for kind, denominator in (("epsilon", snr), ("v_prediction", snr + 1)):
        want = torch.minimum(snr, torch.full_like(snr, 5.0)) / denominator
        got = loss_weights(alpha_bar, 5.0, kind)
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-5, atol=0)
    assert torch.equal(loss_weights(alpha_bar, None, "epsilon"), torch.ones_like(alpha_bar))
    assert loss_weights(alpha_bar, 5.0, "epsilon")[0] < 0.01  # the nearly clean steps no longer dominate


def test_min_snr_weights_the_trainers_loss_and_bad_gamma_is_refused(world, tmp_path):
    """Same samples, timesteps and noise: the logged losses are the weighted ones. Only timesteps with
    SNR > gamma weigh less (with gamma 5, the least noisy ~12%): a small gamma makes most of them count.
    (Adam's first steps move by about lr * sign(gradient) whatever the weights, so the loss, not the
    weights, is what shows it.)"""
    losses = {}
    for name, extra in (("plain", {}), ("snr", {"snr_gamma": 0.05})):
        raw = config(world, tmp_path / name, "motion", train={"steps": 4, "batch_size": 4, **extra})
        Trainer(validate_raw(raw), resume="none").run()
        rows = (tmp_path / name / "run" / "metrics.csv").read_text().splitlines()[1:]
        losses[name] = [float(r.split(",")[1]) for r in rows]
    assert all(s <= p * (1 + 1e-4) for s, p in zip(losses["snr"], losses["plain"]))  # weights are at most 1
    assert any(s < p * 0.99 for s, p in zip(losses["snr"], losses["plain"]))
    with pytest.raises(ConfigError, match="snr_gamma must be positive"):
        validate_raw(config(world, tmp_path / "bad", "motion", train={"snr_gamma": 0}))


def test_prediction_type_follows_the_base_file_unless_told_and_is_written_out(world, tmp_path):
    """Fine-tuning a v-prediction model keeps it one (its loss target is v) and its file says so."""
    from animatediff.checkpoints.io import save_file

    tensors = safetensors.torch.load_file(world["base"])
    meta = safetensors.safe_open(str(world["base"]), "pt").metadata()
    save_file({**tensors, "v_pred": torch.tensor([])}, tmp_path / "v.safetensors", meta)
    for name, told, predicts in (("v", None, "v_prediction"), ("eps", "epsilon", "epsilon")):
        train = {"steps": 1} if told is None else {"steps": 1, "prediction_type": told}
        raw = config(world, tmp_path / name, "image", model=str(tmp_path / "v.safetensors"), train=train)
        trainer = Trainer(validate_raw(raw), resume="none")
        assert trainer.prediction_type == trainer.noise_schedule.prediction_type == predicts
        assert load(trainer.run()).prediction_type == predicts
    lora = Trainer(validate_raw(config(world, tmp_path / "lora", "image_lora", model=str(tmp_path / "v.safetensors"))),
                   resume="none")  # fmt: skip
    assert lora.prediction_type == "v_prediction"
    assert Trainer(validate_raw(config(world, tmp_path / "plain", "image_lora")), resume="none").prediction_type == \
        "epsilon"  # fmt: skip
    with pytest.raises(ConfigError, match="prediction_type must be epsilon or v_prediction"):
        validate_raw(config(world, tmp_path / "bad", "image", train={"prediction_type": "sample"}))


def test_training_timesteps_stay_in_the_configured_range(world, tmp_path):
    raw = config(world, tmp_path, "motion_lora", train={"steps": 3, "batch_size": 4, "min_timestep": 900,
                                                         "max_timestep": 950})  # fmt: skip
    trainer = Trainer(validate_raw(raw), resume="none")
    seen = []
    trainer.module.register_forward_pre_hook(lambda _, args: seen.append(args[1].clone()))
    trainer.run()
    steps = torch.cat(seen)
    assert len(steps) == 12 and steps.min() >= 900 and steps.max() < 950 and len(set(steps.tolist())) > 3
    with pytest.raises(ConfigError, match="min_timestep / max_timestep must satisfy"):
        validate_raw(config(world, tmp_path / "bad", "motion", train={"min_timestep": 500, "max_timestep": 400}))


def test_trained_motion_lora_round_trips_through_diffusers(world, tmp_path):
    """Our trained MotionLoRA, written in diffusers' naming, fused by diffusers' own LoRA loader, gives the
    motion-module weights our loader merges from the original-layout file."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler
    from transformers import CLIPTokenizer

    from animatediff.checkpoints import LoraSet, motion_modules
    from animatediff.checkpoints.export import save_lora
    from animatediff.checkpoints.keymap import key_map
    from reference import diffusers_motion_unet, transformers_clip, write_clip_vocab

    path = Trainer(validate_raw(config(world, tmp_path, "motion_lora", train={"steps": 2})), resume="none").run()
    ours = UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15_v2"]).eval()
    lora, _ = load_lora(path, {"unet": ours})
    save_lora(tmp_path / "diffusers_layout.safetensors", lora.weights, "diffusers")
    again, kind = load_lora(tmp_path / "diffusers_layout.safetensors", {"unet": ours})  # and we read it back
    assert kind == "motion_lora" and len(again.weights) == len(lora.weights)

    ref_unet = diffusers_motion_unet(TINY_UNET, TINY_MOTION["mm_sd_v15_v2"])
    keys = list(ours.state_dict())
    mapping = key_map(keys, motion_modules.diffusers_table([k for k in keys if ".motion_modules." in k]))
    state = {k: v.clone() for k, v in ref_unet.state_dict().items()}
    ours.load_state_dict({k: state[v] for k, v in mapping.items()})
    pipe = AnimateDiffPipeline(vae=None, text_encoder=transformers_clip(TINY_TEXT),
                               tokenizer=CLIPTokenizer.from_pretrained(write_clip_vocab(tmp_path)),
                               unet=ref_unet, motion_adapter=None, scheduler=DDIMScheduler())  # fmt: skip
    pipe.load_lora_weights(str(tmp_path / "diffusers_layout.safetensors"))
    pipe.fuse_lora(lora_scale=0.8)
    pipe.unload_lora_weights()
    LoraSet(ours).add("motion", lora.weights, 0.8)
    fused = ref_unet.state_dict()
    changed = 0
    for k, v in mapping.items():
        if ".motion_modules." in k and k.endswith("weight"):
            assert torch.allclose(ours.state_dict()[k], fused[v], atol=1e-6), k
            changed += not torch.equal(fused[v], state[v])
    assert changed == len(lora.weights)


def test_accumulation_checkpointing_and_bf16(world, tmp_path):
    """Accumulating 2 x 2 samples equals a batch of 4; activation checkpointing changes no number; bf16
    autocast trains to nearly the same weights."""

    def run(name, **train):
        raw = config(world, tmp_path / name, "motion", train={"steps": 2, "batch_size": 4, **train})
        return safetensors.torch.load_file(Trainer(validate_raw(raw), resume="none").run())

    base = run("base")
    # (float sums in another order, amplified by Adam for tiny gradients: as across processes)
    for name, other, atol in (("accum", run("accum", grad_accum=2), 1e-4),
                              ("ckpt", run("ckpt", gradient_checkpointing=True), 0.0),
                              ("bf16", run("bf16", precision="bf16"), 2e-2)):  # fmt: skip
        worst = max((base[k] - other[k]).abs().max().item() for k in base)
        assert worst <= atol, (name, worst)


def test_out_of_memory_is_explained(world, tmp_path, monkeypatch):
    from animatediff.training.loop import TrainingError

    trainer = Trainer(validate_raw(config(world, tmp_path, "motion")), resume="none")

    def oom(*_):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(trainer, "loss", oom)
    with pytest.raises(TrainingError, match=r"out of memory with 2 samples per process: lower train\.batch_size"):
        trainer.run()


def test_debiased_loss_weighs_motion_over_appearance(world, tmp_path, monkeypatch):
    """MotionDirector's debiasing: an error shared by every frame (the clip's look) shrinks to
    sqrt(2) - 1 of itself at beta 1, one that alternates between frames grows. The trainer adds it to
    the plain loss on the same samples: the first logged loss is the plain run's plus the mean square
    of the debiased error it was given, whose plain mean square is the plain run's loss. Only video
    stages take it."""
    import animatediff.training.loop as loop

    shared = torch.ones(2, 4, 8, 3, 3)
    alternating = shared * torch.tensor([1.0, -1.0] * 4).view(1, 1, 8, 1, 1)
    anchors = torch.tensor([0, 5])
    torch.testing.assert_close(loop.debiased(shared, anchors, 1.0), shared * (2**0.5 - 1))
    # sample 1's anchor (frame 5) is -1: its frame 4 (+1) becomes sqrt(2) + 1
    torch.testing.assert_close(loop.debiased(alternating, anchors, 1.0)[1, :, 4], (2**0.5 + 1) * shared[1, :, 4])

    seen, original = [], loop.debiased
    monkeypatch.setattr(loop, "debiased", lambda err, a, beta: seen.append((err, a, beta)) or original(err, a, beta))
    losses = {}
    for name, extra in (("plain", {}), ("debiased", {"debias_beta": 1.0})):
        raw = config(world, tmp_path / name, "motion_lora", train={"steps": 2, "batch_size": 4, **extra})
        Trainer(validate_raw(raw), resume="none").run()
        rows = (tmp_path / name / "run" / "metrics.csv").read_text().splitlines()[1:]
        losses[name] = float(rows[0].split(",")[1])
    err, a, beta = seen[0]
    assert len(seen) == 2 and beta == 1.0 and a.shape == (4,) and a.min() >= 0 and a.max() < err.shape[2]
    plain = err.square().mean().item()
    extra = original(err, a, beta).square().mean().item()
    assert plain == pytest.approx(losses["plain"], rel=1e-4)
    assert losses["debiased"] == pytest.approx(plain + extra, rel=1e-4) and extra > 0.5 * plain
    with pytest.raises(ConfigError, match="debias_beta must be positive and is for the motion stages"):
        validate_raw(config(world, tmp_path / "bad", "image", train={"debias_beta": 1.0}))


def test_locon_image_lora_trains_and_merges_as_it_trained(world, tmp_path):
    """An image LoRA on the ResNet convolutions too (LoCon): written in kohya's layout with 4-D conv
    pairs, it reads back as a plain LoRA and, merged, the UNet gives what the wrapped layers gave."""
    from animatediff.checkpoints import LoraSet
    from animatediff.training import lora as lora_layers

    targets = [lora_layers.IMAGE_ATTENTION, lora_layers.IMAGE_RESNET_CONV]
    path = Trainer(validate_raw(config(world, tmp_path, "image_lora", train={"steps": 2, "lora_targets": targets})),
                   resume="none").run()  # fmt: skip
    tensors = safetensors.torch.load_file(path)
    convs = [k for k in tensors if "_resnets_" in k and k.endswith(".lora_down.weight")]
    assert convs and all(tensors[k].ndim == 4 and tensors[k].shape[2:] == (3, 3) for k in convs)
    assert all(tensors[k.replace("lora_down", "lora_up")].shape[2:] == (1, 1) for k in convs)

    unet = UNet3D(TINY_UNET).eval().requires_grad_(False)
    x, t, text = torch.randn(1, 4, 2, 16, 16), torch.tensor([500]), torch.randn(1, 77, TINY_UNET.cross_attention_dim)
    with torch.no_grad():
        before = unet(x, t, text)
    lora, kind = load_lora(path, {"unet": unet})
    assert kind == "lora" and any(w.down.ndim == 4 for w in lora.weights)
    wrapped = lora_layers.inject(unet, targets, rank=4)
    assert set(wrapped) == {w.module for w in lora.weights}
    with torch.no_grad():  # the file's pairs in the training-time layers (alpha = rank: factor 1)
        for w in lora.weights:
            wrapped[w.module].down.weight.copy_(w.down)
            wrapped[w.module].up.weight.copy_(w.up)
        trained = unet(x, t, text)
        lora_layers.remove(unet, wrapped)  # the plain layers back, then the file merged into them
        LoraSet(unet).add("style", lora.weights, 1.0)
        merged = unet(x, t, text)
    assert (trained - before).abs().max() > 1e-5  # the pairs do something
    torch.testing.assert_close(merged, trained, atol=1e-5, rtol=1e-5)
