"""A random-weight model with the real Stable Diffusion 1.5 architecture, as one .safetensors file.

stable-diffusion.cpp recognises a model by its tensor names and shapes (a 768-wide CLIP text encoder,
a UNet with 320 base channels), so the tiny smoke model does not load there; this one does. It is
built offline from diffusers' and transformers' own classes with a fixed seed (about 20 s of CPU and
2.1 GB in fp16), never downloaded, and cached: built once per machine under the cache folder.

The file holds diffusers-named tensors under the prefixes sd.cpp maps (`unet.`, `vae.`, `te.`); CLIP
keys keep their `text_model.` prefix, which transformers 5 no longer writes and sd.cpp needs.
`pipeline_from_file` loads the same weights into a diffusers pipeline, so both engines can be timed
on identical models.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["build_random_sd15", "cached_random_sd15", "cached_path", "pipeline_from_file", "RANDOM_SD15_VERSION"]

RANDOM_SD15_VERSION = 1
"""Part of the cached file's name: bump when the layout below changes."""
_SEED = 15
_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
_VAE = {"block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 2, "latent_channels": 4,
        "sample_size": 512}
_CLIP = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
         "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768,
         "hidden_act": "quick_gelu"}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kitty-coreml"


def _modules() -> tuple[Any, Any, Any]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(_SEED)
    return UNet2DConditionModel(**_UNET), AutoencoderKL(**_VAE), CLIPTextModel(CLIPTextConfig(**_CLIP))


def _clip_key(key: str) -> str:
    return key if key.startswith("text_model.") or key.startswith("text_projection") else f"text_model.{key}"


def build_random_sd15(target: Path) -> Path:
    """Write the model to `target` (whole or not at all: a temporary file beside it, then a rename)."""
    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error")):
        os.environ.setdefault(name, value)
    from safetensors.torch import save_file

    unet, vae, text_encoder = _modules()
    tensors = {f"unet.{k}": v.half().contiguous() for k, v in unet.state_dict().items()}
    tensors.update({f"vae.{k}": v.half().contiguous() for k, v in vae.state_dict().items()})
    tensors.update({f"te.{_clip_key(k)}": v.half().contiguous() for k, v in text_encoder.state_dict().items()})
    target.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name that save_file creates itself, so the file gets the umask's mode (mkstemp's is 0600)
    partial = str(target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial"))
    try:
        save_file(tensors, partial, metadata={"kitty_coreml": f"random-sd15 v{RANDOM_SD15_VERSION} seed {_SEED}"})
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def cached_path() -> Path:
    return cache_dir() / f"random-sd15-v{RANDOM_SD15_VERSION}.safetensors"


def cached_random_sd15() -> Path:
    """The machine's cached copy, built on first use."""
    target = cached_path()
    if not target.is_file():
        build_random_sd15(target)
    return target


def pipeline_from_file(path: Path, tokenizer_dir: Path) -> Any:
    """A diffusers StableDiffusionPipeline (fp32, CPU) with the weights of a file build_random_sd15 wrote
    and the smoke model's byte-level tokenizer."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    from .smoke import _write_tokenizer_files

    tensors = load_file(str(path))
    unet, vae, text_encoder = _modules()
    for prefix, module in (("unet.", unet), ("vae.", vae)):
        module.load_state_dict({k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)})
    own = set(text_encoder.state_dict())
    text_encoder.load_state_dict({(k[3:] if k[3:] in own else k[3 + len("text_model."):]): v.float()
                                  for k, v in tensors.items() if k.startswith("te.")})
    _write_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77, local_files_only=True)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.device("cpu"))
