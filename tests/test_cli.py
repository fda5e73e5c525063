"""The command line as a user meets it: real subprocesses, real files, exit codes and messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from animatediff import Video
from animatediff.checkpoints.export import save_motion_module, save_sd15
from animatediff.models.clip import CLIPTextModel
from animatediff.models.unet import UNet3D
from animatediff.models.vae import AutoencoderKL
from conftest import TINY_MOTION, TINY_TEXT, TINY_UNET, TINY_VAE


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    unet = randomize(UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15_v2"]))
    save_sd15(d / "model.safetensors", unet, randomize(AutoencoderKL(TINY_VAE)), randomize(CLIPTextModel(TINY_TEXT)))
    save_motion_module(d / "mm_v2.safetensors", unet)
    save_motion_module(d / "mm_v1.safetensors", randomize(UNet3D(TINY_UNET, TINY_MOTION["mm_sd_v15"])))
    data = (d / "model.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 3])
    return {p.stem: p for p in d.iterdir()}


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "animatediff", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip


def tiny(files, *extra: str) -> list[str]:
    return ["--model", files["model"], "--motion-module", files["mm_v2"], "--size", "64", "--frames", "4",
            "--steps", "2", "-q", *extra]  # fmt: skip


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".webp", ".png"])
def test_generate_each_format(tmp_path, files, suffix):
    out = tmp_path / f"clip{suffix}"
    r = cli("generate", "a red circle", *tiny(files, "--seed", "42", "--fps", "10", "-o", out))
    assert r.returncode == 0, r.stderr
    assert "saved" in r.stdout and "seed 42" in r.stdout
    video = Video.load(out if suffix != ".png" else tmp_path / "clip")
    assert len(video) == 4 and video.size == (64, 64)
    assert video.fps == pytest.approx(10, rel=0.01)
    assert video.metadata.get("seed") == "42"


def test_prediction_type_option_overrides_the_file(tmp_path, files):
    frames = {}
    for told in ("", "epsilon", "v_prediction"):
        out = tmp_path / f"{told or 'default'}.png"
        r = cli("generate", "a red circle", *tiny(files, "--seed", "1", "-o", out,
                                                  *(["--prediction-type", told] if told else [])))  # fmt: skip
        assert r.returncode == 0, r.stderr
        frames[told] = Video.load(tmp_path / (told or "default")).frames
    assert (frames[""] == frames["epsilon"]).all()  # the file says nothing: epsilon
    assert (frames[""] != frames["v_prediction"]).any()
    r = cli("generate", "a red circle", *tiny(files, "--prediction-type", "x0"))
    assert r.returncode == 2 and "invalid choice: 'x0'" in r.stderr


def test_default_command_uses_the_embedded_model(tmp_path):
    r = cli("generate", "a red circle moving right on a blue background", "--frames", "4", "--steps", "2", "-q",
            "-o", tmp_path / "demo.gif")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(Video.load(tmp_path / "demo.gif")) == 4


def test_info(files):
    r = cli("info", files["model"], files["mm_v2"], files["mm_v1"])
    assert r.returncode == 0, r.stderr
    assert "Stable Diffusion 1.x model" in r.stdout
    assert "motion module v2" in r.stdout and "motion module v1" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "missing.safetensors"], "missing.safetensors: no such file"),
        (["--model", "{mm_v2}"], "not a file for --model; pass it with --motion-module"),
        (["--model", "{model}", "--motion-module", "{model}"], "not a file for --motion-module; pass it with --model"),
        (["--model", "{truncated}"], "truncated"),
        (["--model", "{model}", "--motion-module", "{mm_v1}", "--frames", "30"], "30 frames exceed"),
        (["--model", "{model}", "--size", "60x64"], "multiples of 8"),
        (["--model", "{model}", "--steps", "0"], "steps must be at least 1"),
        (["--model", "{model}", "--guidance", "-1"], "guidance must be 0 or more"),
        (["--model", "{model}", "--sampler", "plms"], "unknown sampler 'plms'"),
        (["--model", "{model}", "-o", "/nonexistent/dir/x.mp4"], "does not exist"),
        (["--model", "{model}", "-o", "x.avi"], "unsupported output format '.avi'"),
        (["--model", "{model}", "--lora", "{mm_v2}"], "not a LoRA"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(tmp_path, files, args, message):
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    r = cli("generate", "x", "--size", "64", "--frames", "4", "--steps", "2", "-q", *args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not any(p.suffix in (".mp4", ".avi") for p in tmp_path.iterdir())


def test_debug_shows_the_traceback(tmp_path):
    r = cli("--debug", "generate", "x", "--model", "missing.safetensors", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_toy_train_errors_are_one_line_too(tmp_path):
    r = cli("toy", "train", "--work", str(tmp_path / "w"), "--only", "conv1d", "--no-install", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"error: no trained family in {tmp_path / 'w'} yet: train " \
        "without --only first", r.stderr  # fmt: skip
    r = cli("toy", "train", "--work", str(tmp_path / "w"), "--only", "conv1d", "--debug", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_interrupt_leaves_no_file(tmp_path, files):
    out = tmp_path / "never.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "animatediff", "generate", "x", "--model", str(files["model"]), "--motion-module",
         str(files["mm_v2"]), "--size", "64", "--frames", "4", "--steps", "500", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell's background jobs inherit SIGINT ignored; a user's terminal delivers it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    time.sleep(6)  # the tiny models load in about a second: sampling 500 steps is under way
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_run_original_prompt_configs(tmp_path, files):
    inference = tmp_path / "configs" / "inference" / "inference-v2.yaml"
    inference.parent.mkdir(parents=True)
    inference.write_text("unet_additional_kwargs: {}\n")
    v2_style = [{
        "dreambooth_path": str(files["model"]), "lora_model_path": "", "inference_config": str(inference),
        "motion_module": str(files["mm_v2"]), "seed": [1, -1], "steps": 2, "guidance_scale": 7.5,
        "prompt": ["a red circle", "a blue square"], "n_prompt": ["blurry"], "W": 64, "H": 64, "L": 4,
    }]  # fmt: skip
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump(v2_style))
    r = cli("run", tmp_path / "v2.yaml", "-o", tmp_path / "samples", "-q", "--format", "gif")
    assert r.returncode == 0, r.stderr
    made = sorted((tmp_path / "samples" / "v2").glob("*.gif"))
    assert len(made) == 2 and "seed 1" in r.stdout
    v1_style = {"Toy": {"base": "", "path": str(files["model"]), "motion_module": [str(files["mm_v1"])],
                        "seed": [3], "steps": 2, "guidance_scale": 7.5, "prompt": ["a star"], "n_prompt": [""],
                        "W": 64, "H": 64, "L": 4}}  # fmt: skip
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(v1_style))
    r = cli("run", tmp_path / "v1.yaml", "-o", tmp_path / "samples", "-q")
    assert r.returncode == 0, r.stderr
    bad = [{"dreambooth_path": str(files["model"]), "motion_module": str(files["mm_v2"]), "promt": ["typo"]}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = cli("run", tmp_path / "bad.yaml")
    assert r.returncode == 2 and "unknown keys ['promt']" in r.stderr


@pytest.mark.parametrize("verb", ["generate", "run", "info", "train", "shards"])
def test_help_is_complete(verb):
    r = cli(verb, "--help")
    assert r.returncode == 0
    if verb == "generate":
        for flag in ("--negative", "--model", "--motion-module", "--lora", "--motion-lora", "--adapter", "--frames",
                     "--size", "--steps", "--guidance", "--seed", "--sampler", "--fps", "--device", "--dtype", "-o"):
            assert flag in r.stdout, flag  # fmt: skip


def test_env_is_offline():
    """No network use: the package imports no hub clients."""
    code = "import sys, animatediff.cli, animatediff.pipeline; print(any(m.startswith(('huggingface_hub', " \
           "'requests', 'urllib3', 'diffusers', 'transformers')) for m in sys.modules))"  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert r.stdout.strip() == "False", r.stderr
