"""`load(path)`: what a checkpoint is, and its weights under our names.

A `Loaded` names the file's kind and format, its configs, and one `Component` per model it holds
(unet, vae, text_encoder, motion_module). A component maps our parameter names to the file's keys
and reads tensors only when `state_dict()` or `load_into()` asks: a file is never held in memory
twice. LoRA-like files are parsed by `lora.py` instead (their targets depend on the model).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import detect, ldm_sd15, shapes
from . import motion_modules as mm
from .io import CheckpointError, CheckpointFile
from .keymap import adapt_shape, key_map

LOAD_THREADS = min(8, 2 * (os.cpu_count() or 1))


@dataclass
class Component:
    """One model inside a file: `keys` maps our state-dict names to the file's keys."""

    name: str
    config: object
    file: CheckpointFile
    keys: dict[str, str]
    optional: frozenset[str] = frozenset()  # ours that may be absent from the file (position tables)

    def present(self) -> dict[str, str]:
        return {ours: theirs for ours, theirs in self.keys.items() if theirs in self.file}

    def missing(self) -> list[str]:
        return [o for o, t in self.keys.items() if t not in self.file and o not in self.optional]

    def numel(self) -> int:
        n = 0
        for theirs in self.present().values():
            s = 1
            for d in self.file.shape(theirs):
                s *= d
            n += s
        return n

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for ours, theirs in self.present().items():
            t = self.file.get(theirs)
            out[ours] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out


@dataclass
class Loaded:
    path: Path
    kind: str
    format: str
    label: str
    components: dict[str, Component] = field(default_factory=dict)
    version: str | None = None  # motion-module version
    prediction_type: str | None = None  # SD models: "epsilon" / "v_prediction" where the file says; else None
    file: CheckpointFile | None = None
    unused: list[str] = field(default_factory=list)  # file keys no component consumed
    notes: list[str] = field(default_factory=list)

    @property
    def config(self):
        """The config of the single component, for one-model files."""
        return next(iter(self.components.values())).config if self.components else None

    def describe(self) -> str:
        lines = [f"{self.path}: {self.label}" + (f" {self.version}" if self.version else "") + f" [{self.format}]"]
        files = {id(c.file): c.file for c in self.components.values()}
        if self.file is not None:
            files[id(self.file)] = self.file
        dtypes = sorted({str(f.main_dtype()).replace("torch.", "") for f in files.values()})
        total = sum(c.numel() for c in self.components.values())
        if self.file is not None and not self.components:
            total = self.file.numel()
        lines.append(f"  dtype {', '.join(dtypes)}; {total / 1e6:.1f}M parameters")
        for c in self.components.values():
            lines.append(f"  {c.name}: {c.numel() / 1e6:.1f}M parameters, {_config_summary(c.config)}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.unused:
            lines.append(f"  {len(self.unused)} unused keys, e.g. {', '.join(self.unused[:3])}")
        return "\n".join(lines)


def _config_summary(cfg) -> str:
    if cfg is None:
        return ""
    keep = ("block_out_channels", "version", "max_frames", "mid_block", "hidden_size", "num_layers",
            "cross_attention_dim")  # fmt: skip
    return ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items() if k in keep)


# -- entry point ----------------------------------------------------------------------------------


def load(path: str | os.PathLike, *, motion_version: str | None = None, use_ema: bool = False) -> Loaded:
    """Identify a checkpoint file (or diffusers folder) and map its weights to our names."""
    path = Path(path)
    if path.is_dir():
        from .diffusers_folder import load_folder

        return load_folder(path)
    f = CheckpointFile(path)
    keys = f.keys()
    if not keys:
        raise CheckpointError(path, "holds no tensors", "is this a model file?")
    kind = detect.identify(keys)
    if kind is None:
        near, lacking = detect.closest(keys)
        raise CheckpointError(
            path,
            f"unrecognised checkpoint (keys: {detect.top_level_summary(keys)}); closest known kind is "
            f"{near.label}, which would have keys matching {', '.join(lacking)}",
            "pass a Stable Diffusion 1.5 model, VAE, motion module, MotionLoRA or LoRA file",
        )
    if kind.unsupported:
        raise CheckpointError(path, f"this is a {kind.label}: {kind.unsupported}")
    builder = _BUILDERS.get(kind.kind)
    loaded = Loaded(path=path, kind=kind.kind, format=kind.format, label=kind.label, file=f)
    if builder is not None:
        builder(loaded, f, motion_version=motion_version, use_ema=use_ema)
    return loaded


def load_into(model: nn.Module, component: Component, *, strict: bool = True, what: str | None = None) -> None:
    """Copy a component's tensors into `model` (built on `meta` or real), reporting every problem.

    Tensors are assigned (not copied) when the dtype already matches, so a model built on the meta
    device costs no memory until its weights arrive. Floating tensors take the model's dtype.
    """
    what = what or component.name
    target = model.state_dict(keep_vars=True)
    missing = [k for k in component.missing() if k in target]
    unexpected = [k for k in component.keys if k not in target]
    if strict and (missing or unexpected):
        raise CheckpointError(
            component.file.path,
            f"{what} weights do not fit the model: " + _key_report(missing, unexpected),
            "is this the right kind of file for this slot?",
        )
    def fetch(item: tuple[str, str]) -> torch.Tensor:
        ours, theirs = item
        want = target[ours]
        t = adapt_shape(component.file.get(theirs), tuple(want.shape))
        if t is None:
            raise CheckpointError(
                component.file.path,
                f"{what} tensor {theirs} has shape {tuple(component.file.shape(theirs))}, the model expects "
                f"{tuple(want.shape)}",
                "the file was made for a different model size",
            )
        dtype = want.dtype if want.is_floating_point() else t.dtype
        device = want.device if want.device.type != "meta" else torch.device("cpu")
        # No copy when the dtype already fits: the tensor read from the file becomes the parameter.
        return t.to(device=device, dtype=dtype)

    # Reading and casting run in threads: both release the GIL, and filling GBs of fresh memory is
    # bound by page faults that several threads take in parallel (3-4x faster loads here).
    items = [(o, t) for o, t in component.present().items() if o in target]
    with ThreadPoolExecutor(max_workers=LOAD_THREADS) as pool:
        new_state = dict(zip((o for o, _ in items), pool.map(fetch, items)))
    model.load_state_dict(new_state, strict=False, assign=True)
    after = model.state_dict(keep_vars=True)
    still_meta = [k for k in component.keys if k in after and after[k].device.type == "meta"]
    if still_meta:
        raise CheckpointError(
            component.file.path, f"{what} weights missing for {_summarise(still_meta)}", "the file is incomplete"
        )


def _summarise(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _key_report(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_summarise(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_summarise(unexpected)})")
    return ", ".join(parts)


# -- one builder per kind -------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _our_keys(module_type, cfg, *args) -> list[str]:
    """Our state-dict names for a config (configs are frozen, so this is cached)."""
    with torch.device("meta"):
        return list(module_type(cfg, *args).state_dict())


def _unet_keys(cfg, motion=None) -> list[str]:
    from ..models.unet import UNet3D

    return _our_keys(UNet3D, cfg, motion)


def _vae_keys(cfg) -> list[str]:
    from ..models.vae import AutoencoderKL

    return _our_keys(AutoencoderKL, cfg)


def _text_keys(cfg) -> list[str]:
    from ..models.clip import CLIPTextModel

    return _our_keys(CLIPTextModel, cfg)


def _sd15(loaded: Loaded, f: CheckpointFile, use_ema: bool = False, **_) -> None:
    keys = set(f.keys())
    unet_cfg = shapes.metadata_config(f, "unet") or shapes.unet_config_ldm(f, ldm_sd15.UNET_PREFIX)
    unet_map = key_map(_unet_keys(unet_cfg), ldm_sd15.unet_table(unet_cfg), ldm_sd15.UNET_PREFIX)
    if use_ema:
        ema = {o: "model_ema." + "".join(t.split(".")[1:]) for o, t in unet_map.items()}
        if not all(t in keys for t in ema.values()):
            raise CheckpointError(f.path, "has no (complete) EMA weights", "load it without the EMA option")
        unet_map = ema
    elif any(k.startswith("model_ema.") for k in keys):
        loaded.notes.append("EMA weights present and ignored (the regular weights are used)")
    loaded.components["unet"] = Component("unet", unet_cfg, f, unet_map)
    set_prediction_type(loaded, f.metadata.get(ldm_sd15.PREDICTION_METADATA, ""), ldm_sd15.V_PRED_KEY in f)

    vae_probe = ldm_sd15.VAE_PREFIX + "encoder.conv_in.weight"
    if vae_probe in keys:
        vae_cfg = shapes.metadata_config(f, "vae") or shapes.vae_config(f, ldm_sd15.VAE_PREFIX, ldm=True)
        vae_map = key_map(_vae_keys(vae_cfg), ldm_sd15.vae_table(vae_cfg), ldm_sd15.VAE_PREFIX)
        loaded.components["vae"] = Component("vae", vae_cfg, f, vae_map)
    else:
        loaded.notes.append("no VAE inside: pass one with --vae (or the default SD1.5 VAE is needed)")

    table = ldm_sd15.text_table(keys)
    text_prefix = ldm_sd15.TEXT_PREFIX + (table[""] + "." if table[""] else "")
    if text_prefix + "embeddings.token_embedding.weight" in keys:
        text_cfg = shapes.metadata_config(f, "text_encoder") or shapes.text_config(f, text_prefix)
        text_map = key_map(_text_keys(text_cfg), table, ldm_sd15.TEXT_PREFIX)
        loaded.components["text_encoder"] = Component("text_encoder", text_cfg, f, text_map)
    else:
        loaded.notes.append("no text encoder inside")
    ignored = set(ldm_sd15.IGNORED_KEYS) | {ldm_sd15.V_PRED_KEY}
    _report_unused(loaded, f, lambda k: k in ignored or k.startswith("model_ema."))


def set_prediction_type(loaded: Loaded, said: str, v_key: bool = False) -> None:
    """Record what the file says its UNet predicts (metadata or config `said`; `v_key`: the `v_pred` tensor)."""
    said = said.strip().lower()
    loaded.prediction_type = "v_prediction" if v_key else ldm_sd15.PREDICTION_NAMES.get(said)
    if said and loaded.prediction_type is None:
        loaded.notes.append(f"its files name an unknown prediction type {said!r}: sampling assumes epsilon "
                            f"(say otherwise with --prediction-type)")  # fmt: skip
    elif loaded.prediction_type == "v_prediction":
        loaded.notes.append("a v-prediction model (its file says so): sampling predicts v")


def _vae(loaded: Loaded, f: CheckpointFile, **_) -> None:
    keys = f.keys()
    prefix = ldm_sd15.VAE_PREFIX if any(k.startswith(ldm_sd15.VAE_PREFIX) for k in keys) else ""
    ldm = loaded.format == "ldm"
    cfg = shapes.metadata_config(f, "vae") or shapes.vae_config(f, prefix, ldm=ldm)
    from .diffusers_folder import vae_table_diffusers

    table = ldm_sd15.vae_table(cfg) if ldm else vae_table_diffusers(f)
    loaded.components["vae"] = Component("vae", cfg, f, key_map(_vae_keys(cfg), table, prefix))
    _report_unused(loaded, f)


def _unet(loaded: Loaded, f: CheckpointFile, **_) -> None:
    cfg = shapes.metadata_config(f, "unet") or shapes.unet_config_diffusers(f)
    loaded.components["unet"] = Component("unet", cfg, f, {k: k for k in _unet_keys(cfg)})
    _report_unused(loaded, f)


def _text(loaded: Loaded, f: CheckpointFile, **_) -> None:
    prefix = "text_model." if "text_model.final_layer_norm.weight" in f else ""
    cfg = shapes.metadata_config(f, "text_encoder") or shapes.text_config(f, prefix)
    loaded.components["text_encoder"] = Component("text_encoder", cfg, f, key_map(_text_keys(cfg), {}, prefix))
    _report_unused(loaded, f, lambda k: k.endswith("embeddings.position_ids"))


def _motion(loaded: Loaded, f: CheckpointFile, motion_version: str | None = None, **_) -> None:
    file_keys = [k for k in f.keys() if mm.is_motion_key(k)]
    dropped = len(f.keys()) - len(file_keys)
    prefix = "module." if file_keys and all(k.startswith("module.") for k in file_keys) else ""
    stripped = [k[len(prefix) :] for k in file_keys]
    pe_keys = [k for k in file_keys if mm.is_pe_key(k)]
    pe_length = f.shape(pe_keys[0])[1] if pe_keys else None

    version = mm.version_from_keys(stripped, pe_length)
    named = mm.version_from_name(f.path)
    if motion_version is not None:
        if version is not None and version != motion_version:
            loaded.notes.append(f"the file looks like {version}; using {motion_version} as asked")
        version = motion_version
    elif version is None:
        version = named
        if version is None:
            raise CheckpointError(
                f.path,
                "motion module without a position table: v1 and v3 modules look the same",
                "say which with --motion-version v1 or v3",
            )
        loaded.notes.append(f"no position table in the file; {version} assumed from the file name")
    loaded.version = version

    from ..config import UNetConfig

    cfg = shapes.motion_config(f, stripped, version, pe_length)
    unet_cfg = UNetConfig.from_name("sd15")
    ours = [k for k in _unet_keys(_unet_for_motion(f, prefix, unet_cfg), cfg) if ".motion_modules." in k]
    table = mm.diffusers_table(ours) if loaded.format == "diffusers" else {}
    keys = key_map(ours, table, prefix)
    optional = frozenset(k for k in ours if mm.is_pe_key(k))
    loaded.components["motion_module"] = Component("motion_module", cfg, f, keys, optional)
    if dropped:
        loaded.notes.append(f"{dropped} non-motion-module keys ignored (a full UNet training checkpoint?)")
    # The original loader keeps only motion-module keys too; v3 files also carry `animatediff_config`.
    _report_unused(loaded, f, lambda k: not mm.is_motion_key(k))


def _unet_for_motion(f: CheckpointFile, prefix: str, default):
    """The UNet layout the motion module was made for: SD1.5's unless the file records another."""
    cfg = shapes.metadata_config(f, "unet")
    if cfg is not None:
        return cfg
    from dataclasses import replace

    # Channel counts follow the file (the down blocks' first motion module per level).
    chs = []
    for i in range(default.levels):
        k = f"{prefix}down_blocks.{i}.motion_modules.0.temporal_transformer.proj_in.weight"
        k2 = f"{prefix}down_blocks.{i}.motion_modules.0.proj_in.weight"
        key = k if k in f else k2
        if key not in f:
            return default
        chs.append(f.shape(key)[0])
    return replace(default, block_out_channels=tuple(chs))


def _report_unused(loaded: Loaded, f: CheckpointFile, ignore: Callable[[str], bool] = lambda k: False) -> None:
    """Every file key is consumed, deliberately ignored, or listed as unused."""
    used = {t for c in loaded.components.values() for t in c.keys.values()}
    loaded.unused = [k for k in f.keys() if k not in used and not ignore(k)]


_BUILDERS = {"sd15": _sd15, "vae": _vae, "unet": _unet, "text_encoder": _text, "motion_module": _motion}
