"""The smoke model: a tiny random-weight Stable Diffusion pipeline in diffusers format.

It makes noise, quickly, through the real pipeline code (tokenizer, text encoder, UNet, scheduler,
VAE), so the whole product can be exercised on any machine without downloading a real model. The
weights come from a fixed torch seed, so every machine builds the same model. Its tokenizer files are
written here (a byte-level vocabulary with no merges), nothing is fetched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import InstallError
from ..models import ModelInfo, Registry, model_from_folder
from ..settings import Settings

__all__ = ["create_smoke_model", "build_smoke_pipeline", "SMOKE_NAME", "SMOKE_SIZE"]

SMOKE_NAME = "smoke"
SMOKE_SIZE = 64
SMOKE_VERSION = 1
"""Bump when the layout below changes: an older smoke folder is then rebuilt."""
_MARKER = "kitty_smoke.json"
_SEED = 20240601
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def create_smoke_model(settings: Settings, force: bool = False) -> ModelInfo:
    """Build the smoke model under settings.models_dir/smoke (unless a valid one is there and not
    `force`) and register it as `smoke`. Idempotent; safe against a concurrent builder."""
    target = settings.models_dir / SMOKE_NAME
    registry = Registry(settings.registry_path)
    if force or not _is_valid(target):
        _build_into_place(target, replace=force or target.exists())
    model = model_from_folder(target, SMOKE_NAME)
    registered = registry.read()["models"].get(SMOKE_NAME)
    if registered is None or Path(registered.get("path", "")) != model.path:
        registry.register(model)
    return model


def _is_valid(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("version") != SMOKE_VERSION or not (folder / "model_index.json").is_file():
        return False
    return all((folder / part).is_dir() and any((folder / part).iterdir()) for part in _COMPONENTS)


def _build_into_place(target: Path, *, replace: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOKE_NAME}.", suffix=".tmp"))
    try:
        pipeline = build_smoke_pipeline(staging / "tokenizer-source")
        pipeline.save_pretrained(staging / "model", safe_serialization=True)
        for name in ("vocab.json", "merges.txt"):  # what other CLIP tokenizer readers look for
            shutil.copyfile(staging / "tokenizer-source" / name, staging / "model" / "tokenizer" / name)
        (staging / "model" / _MARKER).write_text(json.dumps({"version": SMOKE_VERSION, "seed": _SEED}) + "\n",
                                                 encoding="utf-8")
        if replace and target.exists():
            old = staging / "old"
            os.replace(target, old)
        try:
            os.replace(staging / "model", target)
        except OSError:
            # a concurrent builder won the rename: use its model if it is complete
            if not _is_valid(target):
                raise
    except InstallError:
        raise
    except Exception as exc:
        raise InstallError(f"could not create the smoke model in {target}: {type(exc).__name__}: {exc}",
                           hint="install the diffusers extra: pip install 'kitty-coreml[diffusers]'") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE (GPT-2, CLIP) uses for bytes: printable Latin-1
    bytes stand for themselves, the others are shifted past U+00FF in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    symbols = dict.fromkeys(range(256))
    shifted = 256
    for byte in range(256):
        if byte in kept:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(shifted)
            shifted += 1
    return [symbols[byte] for byte in range(256)]


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A CLIP byte-level BPE vocabulary with every byte, alone and word-final, and no merges: every
    word splits into characters, which is all a random-weight model needs."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n", encoding="utf-8")
    return vocab_path, merges_path


def build_smoke_pipeline(tokenizer_dir: Path):
    """The tiny StableDiffusionPipeline in memory, weights from a fixed seed."""
    # The libraries' own notices (a missing torchvision, shard-writing bars) mean nothing to a user here.
    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _write_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77, local_files_only=True)
    text_width = 32
    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        sample_size=SMOKE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=text_width,
        attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=SMOKE_SIZE,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=text_width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
                              steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
