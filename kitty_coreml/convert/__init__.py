"""Model conversion: Apple's torch2coreml (pinned ml-stable-diffusion, in a venv of its own), single
checkpoints to diffusers first, every stage a supervised child process, every bundle checked before it
is registered as a size variant."""

from __future__ import annotations

from .options import ConvertOptions, Size, parse_size
from .register import Variant, pick_variant, register_variants, variants_of
from .runner import ConvertReport, compiler_available, convert, variant_dir, work_dir

__all__ = ["ConvertOptions", "ConvertReport", "Size", "Variant", "convert", "compiler_available", "parse_size",
           "pick_variant", "register_variants", "variant_dir", "variants_of", "work_dir"]
