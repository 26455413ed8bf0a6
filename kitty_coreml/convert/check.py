"""The check a converted bundle must pass before it is registered. torch2coreml compiles through
`os.system("xcrun coremlcompiler ...")` and never looks at the result, then moves whatever folder is
there (CONTRACTS.md §3); it also saves whatever its tokenizer download returned. So: every file
resources.py requires, every compiled model whole, the Unet's latent shape the size asked, the
attention the flag asked, and tokenizer files that are what they say."""

from __future__ import annotations

import json
from pathlib import Path

from ..resources import inspect_resources
from .options import RESOURCE_ATTENTION, ConvertOptions, Size

__all__ = ["bundle_problems", "expected_models"]

_COMPILED_PARTS = ("metadata.json", "coremldata.bin")


def expected_models(options: ConvertOptions) -> list[str]:
    """The .mlmodelc folders the bundle must hold for these options."""
    names = ["TextEncoder", "TextEncoder2"] if options.source.xl else ["TextEncoder"]
    names += ["UnetChunk1", "UnetChunk2"] if options.chunk_unet else ["Unet"]
    names.append("VAEDecoder")
    if options.vae_encoder:
        names.append("VAEEncoder")
    if options.refiner:
        names += ["UnetRefinerChunk1", "UnetRefinerChunk2"] if options.chunk_unet else ["UnetRefiner"]
    return [f"{name}.mlmodelc" for name in names]


def _compiled_problems(model: Path) -> list[str]:
    if not model.is_dir():
        return [f"{model.name} is missing"]
    out = [f"{model.name}/{part} is missing or empty (the compile failed)" for part in _COMPILED_PARTS
           if not (model / part).is_file() or (model / part).stat().st_size == 0]
    try:
        json.loads((model / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if not out:
            out.append(f"{model.name}/metadata.json is not valid JSON (the compile failed)")
    return out


def _tokenizer_problems(resources: Path) -> list[str]:
    out = []
    try:
        vocab = json.loads((resources / "vocab.json").read_text(encoding="utf-8"))
        if not isinstance(vocab, dict) or "<|endoftext|>" not in vocab:
            out.append("vocab.json is not a CLIP vocabulary (no <|endoftext|>)")
    except (OSError, ValueError):
        out.append("vocab.json is missing or not JSON (the tokenizer download failed)")
    try:
        if not (resources / "merges.txt").read_text(encoding="utf-8").startswith("#version"):
            out.append("merges.txt is not a BPE merges file (the tokenizer download failed)")
    except (OSError, UnicodeDecodeError):
        out.append("merges.txt is missing")
    return out


def bundle_problems(resources: Path, options: ConvertOptions, size: Size) -> list[str]:
    """Everything wrong with a bundle; empty when it may be registered."""
    if not resources.is_dir():
        return [f"{resources} does not exist"]
    problems: list[str] = []
    for name in expected_models(options):
        problems += _compiled_problems(resources / name)
    problems += _tokenizer_problems(resources)
    if problems:
        return problems
    info = inspect_resources(resources)
    problems += [f"{name} is missing" for name in info.missing]
    if (info.width, info.height) != (size.width, size.height):
        problems.append(f"the Unet makes {info.width}x{info.height}, not the {size.label} asked "
                        "(its `sample` input's latent shape)")
    wanted = RESOURCE_ATTENTION[options.attention]
    if info.attention != wanted:
        problems.append(f"the Unet's attention is {info.attention}, not {wanted} (--attention {options.attention})")
    if info.family != ("sdxl" if options.source.xl else "sd"):
        problems.append(f"the bundle is {info.family}, not {'sdxl' if options.source.xl else 'sd'}")
    return problems
