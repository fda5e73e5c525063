"""AnimateDiff motion modules: the original key layout and diffusers' MotionAdapter layout.

Original (mm_sd_v14/v15, mm_sd_v15_v2, v3_sd15_mm; `.ckpt` or `.safetensors`), no prefix:
    down_blocks.{0-3}.motion_modules.{0,1}.temporal_transformer.<...>
    up_blocks.{0-3}.motion_modules.{0,1,2}.temporal_transformer.<...>
    mid_block.motion_modules.0.temporal_transformer.<...>                      (v2 only)
    <...> = norm, proj_in, proj_out, ff_norm, ff.net.{0.proj,2},
            transformer_blocks.0.{norms.{0,1}, attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0, pos_encoder.pe}}
Our module names are the original's, so that layout maps onto our keys unchanged.

diffusers' MotionAdapter drops `temporal_transformer.`, renames `attention_blocks.N` -> `attnN+1`,
`norms.N` -> `normN+1`, `ff_norm` -> `norm3`, and keeps one `pos_embed.pe` per transformer block.

Version (formats.md; as ComfyUI-AnimateDiff-Evolved tells them apart): any mid-block module -> v2;
else a position table of 32 -> v3, of 24 -> v1. Without a table, v1 and v3 look alike: the file
name (mm_sd_v14/15 vs v3) is a hint, or the caller must say.
"""

from __future__ import annotations

import re
from pathlib import Path

from .keymap import PrefixTable

MOTION_KEY = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+\.")
_PE = re.compile(r"\.pos_(encoder|embed)\.pe$")


def is_motion_key(key: str) -> bool:
    return MOTION_KEY.search(key) is not None


def module_prefixes(keys) -> list[str]:
    """`down_blocks.0.motion_modules.1` ... for every motion module with a key in `keys`."""
    out = set()
    for k in keys:
        m = MOTION_KEY.search(k)
        if m:
            out.add(k[m.start() : m.end() - 1])
    return sorted(out)


def diffusers_table(our_keys) -> PrefixTable:
    """Our (original) names -> diffusers MotionAdapter names, built per motion module."""
    t: PrefixTable = {}
    blocks = re.compile(r"^(.*\.motion_modules\.\d+)\.temporal_transformer\.transformer_blocks\.(\d+)\.")
    for prefix in module_prefixes(our_keys):
        src = f"{prefix}.temporal_transformer"
        for name in ("norm", "proj_in", "proj_out"):
            t[f"{src}.{name}"] = f"{prefix}.{name}"
    for k in our_keys:
        m = blocks.match(k)
        if not m:
            continue
        ours, theirs = f"{m[1]}.temporal_transformer.transformer_blocks.{m[2]}", f"{m[1]}.transformer_blocks.{m[2]}"
        t[ours] = theirs
        for a in (0, 1):
            t[f"{ours}.attention_blocks.{a}"] = f"{theirs}.attn{a + 1}"
            t[f"{ours}.norms.{a}"] = f"{theirs}.norm{a + 1}"
            # one shared position table per block in diffusers
            t[f"{ours}.attention_blocks.{a}.pos_encoder"] = f"{theirs}.pos_embed"
        t[f"{ours}.ff_norm"] = f"{theirs}.norm3"
    return t


def is_pe_key(key: str) -> bool:
    return _PE.search(key) is not None


def version_from_keys(keys, pe_length: int | None) -> str | None:
    """'v2' / 'v3' / 'v1', or None when v1 and v3 cannot be told apart (no position table)."""
    if any(k.startswith("mid_block.motion_modules.") or ".mid_block.motion_modules." in k for k in keys):
        return "v2"
    if pe_length == 32:
        return "v3"
    if pe_length == 24:
        return "v1"
    return None


def version_from_name(path: str | Path) -> str | None:
    """The released file names: mm_sd_v14 / mm_sd_v15 (v1), mm_sd_v15_v2 (v2), v3_sd15_mm (v3)."""
    name = Path(path).name.lower()
    if "v3" in name:
        return "v3"
    if "v15_v2" in name or "mm_v2" in name:
        return "v2"
    if "mm_sd_v14" in name or "mm_sd_v15" in name:
        return "v1"
    return None
