"""The toy world: a deterministic generator, a dataset writer the trainer reads, a family that trains
end to end through the real trainer, and the shipped model family."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from animatediff import Video, load
from animatediff.toy import dataset, models, world
from animatediff.toy.detect import detect
from animatediff.toy.models import FILES, unknown_words
from animatediff.training.data import ClipDataset, ImageFolder, VideoFolder

EXPECTED_KINDS = {
    "base": "sd15", "personal": "sd15", "motion": "motion_module", "motion_conv1d": "motion_module",
    "adapter": "domain_adapter", "style_lora": "lora", "pan_right": "motion_lora", "zoom_in": "motion_lora",
}  # fmt: skip
# every word a caption uses to name a motion (still captions use none of them)
MOTION_WORDS = {"moving", "camera"} | {w for kind in world.MOTIONS for w in kind.split()}


def test_generator_is_deterministic():
    a, text_a = dataset.video_sample(7, 3)
    b, text_b = dataset.video_sample(7, 3)
    c, _ = dataset.video_sample(7, 4)
    assert np.array_equal(a, b) and text_a == text_b
    assert not np.array_equal(a, c)
    assert a.shape == (16, world.SIZE, world.SIZE, 3) and a.dtype == np.uint8
    image, caption = dataset.image_sample(7, 3)
    assert np.array_equal(image, dataset.image_sample(7, 3)[0]) and caption.startswith("a ")


def test_adapter_frames_are_the_clips_middle_frames_captioned_as_stills():
    for i in range(20):
        clip, text = dataset.video_sample(5, i)
        frame, still = dataset.frame_sample(5, i)
        assert np.array_equal(frame, clip[len(clip) // 2])  # the same clip's scene as sampled, watermark and all
        assert detect(frame).watermark
        # the clip's caption with its motion words taken out
        words, rest = still.split(), iter(text.replace(",", "").split())
        assert all(w in rest for w in words) and len(words) < len(text.split())
        assert not MOTION_WORDS & set(words)


def test_clips_captioned_as_stills_are_the_same_clips():
    for i in range(20):
        clip, _ = dataset.video_sample(5, i)
        same, still = dataset.video_sample(5, i, motion_words=False)
        assert np.array_equal(clip, same)
        assert still == dataset.frame_sample(5, i)[1]  # the caption without its motion words (above)


def test_captions_name_the_scene():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = world.sample_scene(rng)
        motion = world.sample_motion(rng, shape=scene.shape)
        text = world.caption(scene, motion)
        back = world.scene_for_prompt(text, rng)
        assert (back.color, back.shape, back.size, back.background, back.texture) == (
            scene.color, scene.shape, scene.size, scene.background, scene.texture)  # fmt: skip
        assert unknown_words(text) == []
        assert not (scene.shape == "circle" and motion.kind == "rotating")


def test_unknown_words_are_named():
    assert unknown_words("a red circle wearing a Hat, on the moon!") == ["hat", "moon", "the", "wearing"]


def test_dataset_writer_feeds_the_trainer(tmp_path):
    images = dataset.write_images(tmp_path / "images", 6, seed=1)
    videos = dataset.write_videos(tmp_path / "videos", 3, seed=2, kinds=("pan right",))
    assert len(ImageFolder(images)) == 6 and len(VideoFolder(videos)) == 3
    clip, text = dataset.video_sample(2, 0, ("pan right",))
    assert np.array_equal(Video.load(videos / "000000.mp4").frames, clip)  # lossless
    assert (videos / "000000.txt").read_text() == text and "camera pan right" in text
    sample = ClipDataset(VideoFolder(videos), frames=16, stride=1, size=world.SIZE)[0]
    assert sample["pixels"].shape == (16, 3, world.SIZE, world.SIZE)
    before = (images / "000000.png").stat().st_mtime_ns
    dataset.write_images(tmp_path / "images", 6, seed=1)  # already complete: nothing rewritten
    assert (images / "000000.png").stat().st_mtime_ns == before
    dataset.write_images(tmp_path / "images", 4, seed=2)  # another set: rewritten, the old one gone
    assert sorted(p.name for p in images.glob("*.png")) == [f"{i:06d}.png" for i in range(4)]
    assert (images / "000000.txt").read_text() == dataset.image_sample(2, 0)[1]


def test_scenes_stand_upright_unless_asked_for_any_angle():
    """Captions never name an orientation: a square's sides are level in the data (a tiny base trained
    on random angles draws round blobs). The VAE's batches ask for any angle, as rotating clips show."""

    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(rng) for _ in range(50)]
    assert all(s.angle == 0 for s in scenes)
    square = next(s for s in scenes if s.shape == "square" and s.texture == "plain")
    angle = detect(world.render(square)).angle % 90
    assert min(angle, 90 - angle) < 5
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    turned = [world.sample_scene(a, upright=False) for _ in range(50)]
    assert len({round(s.angle) for s in turned}) > 30  # any angle, from the same random stream:
    upright = [world.sample_scene(b) for _ in range(50)]
    assert [(s.color, s.shape, s.x) for s in turned] == [(s.color, s.shape, s.x) for s in upright]


def test_every_stage_of_the_family_trains(tmp_path, monkeypatch):
    """The whole recipe (`animatediff toy train`) at smoke size: every stage through the real trainer."""
    from animatediff.toy import train
    from animatediff.toy.train import QUICK, install_files, train_family

    trained_on, dropout, batch = {}, {}, {}  # each stage's starting model, caption dropout and clips a step

    def run_stage(name, cfg, log=print):
        trained_on[name] = Path(cfg.model)
        dropout[name] = cfg.data.caption_dropout
        batch[name] = cfg.train.batch_size
        return real_run_stage(name, cfg, log)

    real_run_stage = train.run_stage
    monkeypatch.setattr(train, "run_stage", run_stage)
    out = train_family(tmp_path / "work", QUICK, seed=0, install=False, log=lambda *_: None)
    monkeypatch.setattr(train, "run_stage", real_run_stage)
    assert set(out["files"]) == set(FILES)
    for key, file in out["files"].items():
        assert load(file).kind == EXPECTED_KINDS[key], key
    # the base ships after its second cycle; the rest of the family trained on the first cycle's, as shipped
    first = tmp_path / "work" / "base" / "model.safetensors"
    assert trained_on.pop("base") == tmp_path / "work" / "init.safetensors"
    assert trained_on.keys() == set(train.STAGES) - {"base"} and set(trained_on.values()) == {first}
    # the image models learn the empty prompt too (CFG's other branch): the personalised style's as well, or
    # at CFG 4 it pulls the style back to the base's filled shapes (docs/toy_world.md)
    assert {name for name, p in dropout.items() if p > 0} == {"base", "refine", "personal", "style_lora"}
    # each MotionLoRA takes its own clips a step (pan right twice the motion module's: docs/toy_world.md)
    got = (batch["motion"], batch["pan_right"], batch["zoom_in"])
    assert got == (QUICK.video_batch, QUICK.pan_right_batch, QUICK.zoom_in_batch) == (2, 4, 2)
    unet = lambda f: load(f).components["unet"].state_dict()  # noqa: E731
    refined, before = unet(out["files"]["base"]), unet(first)
    assert refined.keys() == before.keys() and any(not torch.equal(refined[k], before[k]) for k in before)
    # the motion stages' clips are captioned as stills: the base's text encoder never learnt motion words
    for folder in ("videos", "pan_right", "zoom_in"):
        captions = [f.read_text() for f in (tmp_path / "work" / "data" / folder).glob("*.txt")]
        assert captions and not any(MOTION_WORDS & set(c.replace(",", " ").split()) for c in captions)
    # the text encoder is pretrained in a stage of its own, then frozen: the base's is the init's
    text = lambda f: load(f).components["text_encoder"].state_dict()  # noqa: E731
    init, base = text(tmp_path / "work" / "init.safetensors"), text(out["files"]["base"])
    assert init and all(torch.equal(init[k], base[k]) for k in init)
    install_files({k: Path(v) for k, v in out["files"].items()}, tmp_path / "pkg")
    assert sorted(p.name for p in (tmp_path / "pkg").iterdir()) == sorted(FILES.values())

    # `only`: that stage is trained again from scratch, the others are left exactly as they were
    stamps = lambda: {k: Path(v).stat().st_mtime_ns for k, v in out["files"].items()}  # noqa: E731
    before = stamps()
    again = train_family(tmp_path / "work", QUICK, seed=0, install=False, log=lambda *_: None, only=("zoom_in",))
    after = stamps()
    assert [k for k in FILES if after[k] != before[k]] == ["zoom_in"]
    assert set(again["times"]) == {"datasets", "zoom_in"}  # the kept stages did not run
    with pytest.raises(ValueError, match="made with text_steps 2, this recipe has 0"):  # nothing removed
        train_family(tmp_path / "work", replace(QUICK, text_steps=0), install=False, only=("base",))
    assert Path(out["files"]["base"]).stat().st_mtime_ns == after["base"]
    with pytest.raises(ValueError, match="unknown stage"):
        train_family(tmp_path / "work", QUICK, install=False, only=("zoom",))
    with pytest.raises(FileNotFoundError, match="train without --only first"):
        train_family(tmp_path / "empty", QUICK, install=False, log=lambda *_: None, only=("conv1d",))
    assert not (tmp_path / "empty" / "data").exists()  # refused before writing anything
    # the base again: its second cycle follows, so no base made from the previous one is installed
    again = train_family(tmp_path / "work", QUICK, seed=0, install=False, log=lambda *_: None, only=("base",))
    assert set(again["times"]) == {"datasets", "base", "refine"}

    # side by side: a run needs only the outputs its stages train on (here: not the motion module's)
    Path(out["files"]["motion"]).unlink()
    monkeypatch.setattr(train, "install_files", lambda *_: pytest.fail("the package's files were replaced"))
    train_family(tmp_path / "work", QUICK, seed=0, install=False, log=lambda *_: None, only=("personal",))
    for only, install in ((("zoom_in",), False), (("personal",), True)):
        with pytest.raises(FileNotFoundError, match="stage motion has no output yet"):
            train_family(tmp_path / "work", QUICK, seed=0, install=install, log=lambda *_: None, only=only)


def test_a_vae_is_taken_only_from_a_toy_single_file(tmp_path):
    from animatediff.toy.train import QUICK, toy_vae_of, train_family

    assert toy_vae_of(models.path("base")).config.scaling_factor == load(models.path("base")).components[
        "vae"].config.scaling_factor  # fmt: skip
    with pytest.raises(ValueError, match="holds no toy-world VAE"):
        toy_vae_of(models.path("motion"))
    with pytest.raises(ValueError, match="holds no toy-world VAE"):  # before any dataset is written
        train_family(tmp_path, QUICK, install=False, log=lambda *_: None, vae_from=models.path("motion"))
    assert not (tmp_path / "data").exists()


def test_text_pretraining_tells_apart_what_the_base_merged():
    """The text encoder's own stage: captions that differ in one shape word end far apart, as none do at
    the random init and as triangle and star did not in the jointly trained shipped base."""
    from animatediff.config import TOY_TEXT
    from animatediff.models.clip import CLIPTextModel
    from animatediff.models.tokenizer import load_tokenizer
    from animatediff.prompts import encode_ids, prompt_ids
    from animatediff.toy.train import train_text

    captions = [f"a large white {s} on a black background" for s in world.SHAPES]
    ids, _ = prompt_ids(load_tokenizer(), captions)

    def closest(text) -> float:  # the two nearest shapes' distance (mean over the 77 states)
        with torch.no_grad():
            h = encode_ids(text, ids, len(captions))
        return min(float((h[i] - h[j]).norm(dim=-1).mean()) for i in range(4) for j in range(i + 1, 4))

    torch.manual_seed(0)
    text = CLIPTextModel(TOY_TEXT).eval()
    before = closest(text)
    after = closest(train_text(text, 40, 0, torch.device("cpu"), lambda *_: None, batch=32))
    assert after > 3 * before, (before, after)


def test_lane_schedule_runs_every_stage_after_what_it_trains_on():
    from animatediff.toy.train import NEEDS, SCHEDULE, STAGES

    order = [name for phase in SCHEDULE for lane in phase for name in lane]
    assert sorted(order) == sorted(STAGES)
    done: set[str] = set()
    for phase in SCHEDULE:
        assert len(phase) <= 2
        for lane in phase:  # a lane may use its own earlier stages and earlier phases', not its neighbour's
            ready = set(done)
            for name in lane:
                assert set(NEEDS[name]) <= ready, name
                ready.add(name)
        done |= {name for lane in phase for name in lane}


def test_two_lanes_train_every_stage_once(tmp_path):
    """`toy train --lanes 2`: phases of two lanes, the second in its own process; every file comes out,
    each stage ran once, and a rerun finds them all done."""
    from animatediff.toy.train import QUICK, STAGES, train_family

    shipped = models.path("base")
    out = train_family(tmp_path / "work", QUICK, seed=0, install=False, log=lambda *_: None, lanes=2,
                       vae_from=shipped)  # fmt: skip
    assert set(out["times"]) == {"datasets", "text", *STAGES}  # the VAE was taken, not trained
    for key, file in out["files"].items():
        assert load(file).kind == EXPECTED_KINDS[key], key
    vae = lambda f: load(f).components["vae"]  # noqa: E731
    assert vae(out["files"]["base"]).config == vae(shipped).config
    taken, theirs = vae(out["files"]["base"]).state_dict(), vae(shipped).state_dict()
    assert theirs and all(torch.equal(taken[k].float(), theirs[k].float()) for k in theirs)
    again = train_family(tmp_path / "work", QUICK, seed=0, install=False, log=lambda *_: None, lanes=2)
    assert set(again["times"]) == {"datasets"}


@pytest.mark.parametrize("kind", ["pan right", "zoom in", "left", "growing"])
def test_rendered_motions_are_what_the_detector_reads(kind):
    from animatediff.toy.detect import motion_matches, video_metrics

    rng = np.random.default_rng(5)
    for _ in range(5):
        scene = world.sample_scene(rng)
        frames = world.render_video(scene, world.Motion(kind, 1.8))
        metrics = video_metrics(frames, scene)
        assert metrics["adherence"] == 1.0 and motion_matches(metrics, kind)


# -- the shipped family ----------------------------------------------------------------------------------


def test_shipped_family_loads_within_the_size_budget():
    from animatediff.toy.models import path

    total = 0
    for key in FILES:
        assert load(path(key)).kind == EXPECTED_KINDS[key], key
        total += path(key).stat().st_size
    assert total <= 30 * 2**20, f"{total / 2**20:.1f} MiB"


@pytest.mark.parametrize(
    "prompt", ["a large red circle on a blue background", "a large yellow square on a green background"]
)
def test_default_is_the_trained_family(prompt):
    """Random weights draw noise; the trained family at least paints the prompt's background colour."""
    from animatediff import AnimateDiff

    pipe = AnimateDiff.default(device="cpu")
    assert not any("random" in n for n in pipe.notes)
    video = pipe(prompt, frames=16, steps=25, seed=0, progress=False)
    assert video.frames.shape == (16, world.SIZE, world.SIZE, 3)
    rows = video.frames.astype(float)
    border = np.concatenate([rows[:, :4].reshape(-1, 3), rows[:, -4:].reshape(-1, 3)]).mean(0)
    nearest = min(world.COLORS, key=lambda c: np.linalg.norm(border - np.array(world.COLORS[c])))
    assert nearest == world.scene_for_prompt(prompt, np.random.default_rng(0)).background


def test_shipped_files_default_to_the_size_they_were_trained_at():
    from animatediff import AnimateDiff
    from animatediff.toy.models import path

    pipe = AnimateDiff.from_checkpoints(path("personal"), path("motion"), device="cpu", dtype="float32")
    assert pipe.default_size == world.SIZE  # not SD1.5's 512: the UNet config records its sample size


def test_default_samples_with_the_familys_guidance():
    from animatediff import AnimateDiff
    from animatediff.toy.models import GUIDANCE

    assert GUIDANCE != 7.5 and AnimateDiff.default(device="cpu").default_guidance == GUIDANCE


def test_default_names_unknown_words():
    from animatediff import AnimateDiff

    with pytest.warns(UserWarning, match="does not know 'dragon'.*--model"):
        AnimateDiff.default(device="cpu")("a red dragon on a blue background", frames=2, steps=2, seed=0,
                                          progress=False)  # fmt: skip


def test_targets_are_judged_from_the_rows():
    """The targets table reads the rows' summaries: a family that reaches every target is 'met' seven
    times; each shortfall turns its own line to 'not met'."""
    from animatediff.toy.evaluate import SETTINGS, _targets

    still = {"adherence": 0.6, "consistency": 0.6, "flicker": 15.0, "jumps": 0.4, "moving": 0.7, "displacement": 6.0,
             "outlined": 0.2, "watermark": 0.0, "lora hit": math.nan}  # fmt: skip
    good = {s.name: {**still, "adherence": 0.97, "consistency": 0.98, "flicker": 3.0, "jumps": 0.05, "moving": 0.95,
                     "displacement": 8.0} for s in SETTINGS}  # fmt: skip
    good["base, frame by frame"] = still
    good["outlined, frame by frame"] = {**still, "outlined": 0.9}
    good["outlined + motion module"] = {**good["outlined + motion module"], "outlined": 0.92}
    good["+ MotionLoRA pan right"] = {**good["+ MotionLoRA pan right"], "lora hit": 0.95}
    good["+ MotionLoRA zoom in"] = {**good["+ MotionLoRA zoom in"], "lora hit": 0.9}
    good["conv1d motion module (ablation)"] = {**good["conv1d motion module (ablation)"], "displacement": 2.0}
    good["+ domain adapter at scale 1"] = {**good["+ domain adapter at scale 1"], "watermark": 0.8}
    assert [t.measure(good)[1] for t in _targets()] == [True] * 7
    worse = [
        (0, "base + motion module", {"adherence": 0.9}),
        (1, "base, frame by frame", {"consistency": 0.97, "jumps": 0.05}),  # as steady as the module
        (1, "base, frame by frame", {"jumps": 0.0}),  # less consistent, but the module jumps more
        (2, "outlined + motion module", {"outlined": 0.5}),
        (3, "+ MotionLoRA pan right", {"lora hit": 0.85}),
        (4, "+ MotionLoRA zoom in", {"lora hit": 0.85}),
        (5, "conv1d motion module (ablation)", {"displacement": 6.0}),
        (6, "base + motion module", {"watermark": 0.2}),
    ]
    for i, row, values in worse:
        changed = {**good, row: {**good[row], **values}}
        assert [t.measure(changed)[1] for t in _targets()].index(False) == i, (row, values)


# What the CI evaluation (2 prompts, seed 0, the family's CFG 4) measured on the shipped family, less a
# margin: 0.1 on adherence and consistency (at most 0.8), a quarter on the style and watermark shares, so that a style
# or adapter that does nothing fails. A retrained or broken family that falls below fails here. The
# issue's targets are higher (docs/toy_eval.md says which are met); the floors follow the family as it
# improves. A floor of 0 could not fail: none is set. The MotionLoRAs' hits are two videos: one may miss.
FLOORS = {
    "base, frame by frame": {"adherence": (">=", 0.8), "consistency": (">=", 0.8)},
    "base + motion module": {"adherence": (">=", 0.8), "consistency": (">=", 0.8), "watermark": ("<=", 0.1)},
    "outlined, frame by frame": {"adherence": (">=", 0.8), "consistency": (">=", 0.8), "outlined": (">=", 0.75)},
    "outlined + motion module": {"adherence": (">=", 0.8), "consistency": (">=", 0.8), "outlined": (">=", 0.75)},
    # the style LoRA retrained with caption dropout (2026-12-06): every frame of these two videos outlined (0.69
    # before), but 0.28 of them as prompted (0.59 before; over the table's 32 videos 69%, as before)
    "base + outlined LoRA + motion module": {"adherence": (">=", 0.18), "consistency": (">=", 0.4),
                                             "outlined": (">=", 0.75)},
    "+ MotionLoRA pan right": {"adherence": (">=", 0.8), "consistency": (">=", 0.8), "lora hit": (">=", 0.5)},
    "+ MotionLoRA zoom in": {"adherence": (">=", 0.8), "consistency": (">=", 0.8), "lora hit": (">=", 0.5)},
    "+ domain adapter at scale 1": {"adherence": (">=", 0.8), "consistency": (">=", 0.8), "watermark": (">=", 0.75)},
    "conv1d motion module (ablation)": {"adherence": (">=", 0.8), "consistency": (">=", 0.8)},
}  # fmt: skip


def test_evaluation_runs_every_setting():
    """`animatediff toy eval` end to end on two prompts: a row per setting, every figure in range, and
    the shipped family's figures at or above the floors."""
    from animatediff.toy.evaluate import COLUMNS, SETTINGS, evaluate, table, targets

    rows = evaluate(2, (0,), log=lambda *_: None)
    assert [r.setting for r in rows] == list(SETTINGS)
    for row in rows:
        summary = row.summary()
        assert set(summary) == set(COLUMNS) and len(row.metrics) == 2
        for key in ("adherence", "consistency", "moving", "outlined", "watermark"):
            assert 0.0 <= summary[key] <= 1.0
        for key, (op, bound) in FLOORS.get(row.setting.name, {}).items():
            value = summary[key]
            assert value >= bound if op == ">=" else value <= bound, (row.setting.name, key, value, op, bound)
    assert table(rows).count("\n") == len(SETTINGS) + 2
    judged = targets(rows).splitlines()[2:]
    assert len(judged) == 7 and all(line.endswith(("| **met** |", "| not met |")) for line in judged)


def test_evaluation_names_its_seeds(monkeypatch):
    """`toy eval --first-seed` runs fresh seeds, and the page says which seeds and how to rerun them;
    impossible counts are refused (exit 2) before anything runs."""
    from animatediff.toy import evaluate as E

    monkeypatch.setattr(E, "table", lambda rows: "")
    monkeypatch.setattr(E, "targets", lambda rows: "")
    page = E.report([], 8, (8, 9, 10, 11), 25, gifs=True)
    assert "`animatediff toy eval --prompts 8 --seeds 4 --first-seed 8`" in page
    assert "4 seeds (8-11)" in page and "seed 8." in page
    page = E.report([], 8, (0, 1, 2, 3), 25)
    assert "--seeds 4`" in page and "first-seed" not in page and "GIF" not in page
    for argv in (["--seeds", "0"], ["--first-seed", "-1"], ["--prompts", "0"]):
        assert E.main(argv) == 2
    ran = []
    monkeypatch.setattr(E, "evaluate", lambda n, seeds, *args, **kw: ran.append((n, seeds)) or [])
    monkeypatch.setattr(E, "report", lambda *args, **kw: "")
    assert E.main(["--first-seed", "8", "--seeds", "2"]) == 0 and E.main(["--quick", "--first-seed", "3"]) == 0
    assert ran == [(8, (8, 9)), (4, (3,))]
