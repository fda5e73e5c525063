"""Model configurations as frozen dataclasses, with presets named after the real checkpoints.

Every size is a field, so tests and the embedded toy model run the same code at tiny sizes.
`XConfig.from_name("preset")` returns a preset; `dataclasses.replace(cfg, field=...)` derives one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal, TypeVar

T = TypeVar("T")


class _Presets:
    """Shared by the config classes: a dict of named presets and plain-dict conversion."""

    PRESETS: ClassVar[dict[str, object]]

    @classmethod
    def from_name(cls: type[T], name: str) -> T:
        try:
            return cls.PRESETS[name]  # type: ignore[attr-defined]
        except KeyError:
            known = ", ".join(sorted(cls.PRESETS))  # type: ignore[attr-defined]
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; known presets: {known}") from None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], d: dict) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class UNetConfig(_Presets):
    """The Stable Diffusion 1.x UNet (diffusers' UNet2DConditionModel at SD1.5's settings)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    # Which levels carry spatial transformers (SD1.5: all but the deepest). Up levels mirror these.
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    # SD1.5 uses 8 heads at every level (diffusers' misnamed `attention_head_dim=8`).
    num_heads: tuple[int, ...] = (8, 8, 8, 8)
    transformer_layers: int = 1
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    # SD1.x stores proj_in/proj_out of the spatial transformers as 1x1 convs, SD2.x as linears.
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    # Latent side the model was trained at (SD1.5: 64, i.e. 512 px): the default video size.
    sample_size: int = 64

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)


@dataclass(frozen=True)
class MotionConfig(_Presets):
    """An AnimateDiff motion module family (the original's `unet_additional_kwargs`)."""

    version: Literal["v1", "v2", "v3"] = "v2"
    num_heads: int = 8
    # Length of the sinusoidal position table (`pos_encoder.pe`): the most frames one call may take.
    max_frames: int = 32
    # v2 adds a motion module in the mid block, after its attention.
    mid_block: bool = True
    transformer_layers: int = 1
    norm_num_groups: int = 32
    ff_mult: int = 4
    # "conv1d": the paper's ablation (sec. 5.3), a 1D temporal convolution in place of each temporal
    # attention, with about as many parameters. Only files this package writes use it.
    kind: Literal["transformer", "conv1d"] = "transformer"
    # The original's `use_inflated_groupnorm`. v1 modules were trained with it off, so every ResNet
    # GroupNorm and the UNet's final norm pool statistics over all frames of a video; v2/v3 normalise
    # each frame on its own (as diffusers always does).
    inflated_groupnorm: bool = True

    @property
    def pools_norm_over_frames(self) -> bool:
        return not self.inflated_groupnorm


@dataclass(frozen=True)
class VAEConfig(_Presets):
    """AutoencoderKL (sd-vae-ft-mse and the VAE inside every SD1.5 checkpoint)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215


@dataclass(frozen=True)
class TextConfig(_Presets):
    """CLIP text transformer (SD1.5 uses OpenAI's ViT-L/14 text tower)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_positions: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    eos_token_id: int = 49407


# The embedded toy family (issue: the toy world): the same classes at a size a CPU runs in seconds.
# Sized for the package's 30 MB budget (CLIP's 49408-token table dominates the text encoder) and for
# a 16-frame video in a few seconds on a laptop CPU.
TOY_UNET = UNetConfig(
    block_out_channels=(32, 64, 64), attention_levels=(False, True, True), num_heads=(4, 4, 4),
    cross_attention_dim=32, norm_num_groups=8, sample_size=16,
)  # fmt: skip
TOY_MOTION = MotionConfig(version="v2", num_heads=4, max_frames=32, mid_block=True, norm_num_groups=8)
TOY_VAE = VAEConfig(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, scaling_factor=1.0)
TOY_TEXT = TextConfig(hidden_size=32, intermediate_size=128, num_layers=3, num_heads=4)

UNetConfig.PRESETS = {
    "sd15": UNetConfig(),
    "toy": TOY_UNET,
}

MotionConfig.PRESETS = {
    # v1: no mid-block module, 24 positions, GroupNorm pooled over frames.
    "mm_sd_v14": MotionConfig(version="v1", max_frames=24, mid_block=False, inflated_groupnorm=False),
    "mm_sd_v15": MotionConfig(version="v1", max_frames=24, mid_block=False, inflated_groupnorm=False),
    "mm_sd_v15_v2": MotionConfig(version="v2", max_frames=32, mid_block=True, inflated_groupnorm=True),
    "v3_sd15_mm": MotionConfig(version="v3", max_frames=32, mid_block=False, inflated_groupnorm=True),
    "toy": TOY_MOTION,
    "toy_conv1d": replace(TOY_MOTION, kind="conv1d"),
}

VAEConfig.PRESETS = {
    "sd-vae-ft-mse": VAEConfig(),
    "toy": TOY_VAE,
}

TextConfig.PRESETS = {
    "clip-vit-large-patch14": TextConfig(),
    "toy": TOY_TEXT,
}

#: The preset used when a motion version is known but nothing else is.
MOTION_PRESET_FOR_VERSION = {"v1": "mm_sd_v15", "v2": "mm_sd_v15_v2", "v3": "v3_sd15_mm"}


def motion_preset(version: str, max_frames: int | None = None) -> MotionConfig:
    """The released configuration for a motion-module version, optionally with another table length."""
    cfg = MotionConfig.from_name(MOTION_PRESET_FOR_VERSION[version])
    return cfg if max_frames is None else replace(cfg, max_frames=max_frames)
