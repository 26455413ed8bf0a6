"""What a conversion is asked for, read before anything runs: sources, sizes, defaults, the stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kitty_coreml.convert.check import expected_models
from kitty_coreml.convert.options import ConvertOptions, parse_size, parse_source
from kitty_coreml.convert.stages import plan_stages
from kitty_coreml.errors import InvalidRequest


def test_sizes_are_multiples_of_64_within_range():
    assert parse_size("1024x576").latent_w == 128 and parse_size("1024X576").latent_h == 72
    for bad in ("192x192", "2112x512", "520x512", "1024*576", ""):
        with pytest.raises(InvalidRequest, match="--size"):
            parse_size(bad)


def test_an_sdxl_checkpoint_is_known_by_its_second_text_encoder(tmp_path):
    xl, sd = tmp_path / "xl.safetensors", tmp_path / "sd.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(1)}, str(xl))
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1)}, str(sd))
    assert parse_source(str(xl), xl=None).xl and not parse_source(str(sd), xl=None).xl
    assert not parse_source(str(xl), xl=False).xl
    assert parse_source("stabilityai/stable-diffusion-xl-base-1.0", xl=None).xl
    assert parse_source(str(sd), xl=None).default_name == "sd"


def test_the_default_attention_follows_the_compute_units():
    for units, attention in (("cpuAndNeuralEngine", "split-einsum"), ("all", "split-einsum"),
                             ("cpuAndGPU", "original"), ("cpuOnly", "original")):
        assert ConvertOptions.build("org/model", ["512x512"], compute_units=units).attention == attention
    with pytest.raises(InvalidRequest, match="--compute-units"):
        ConvertOptions.build("org/model", ["512x512"], compute_units="gpu")


def test_an_sdxl_plan_with_refiner_and_chunks(tmp_path):
    options = ConvertOptions.build("org/model-xl", ["1024x1024", "1024x1024", "1152x896"], refiner="org/refiner-xl",
                                   chunk_unet=True)
    assert [s.label for s in options.sizes] == ["1024x1024", "1152x896"]  # asked twice, converted once
    stages = plan_stages(options, python=Path("/venv/bin/python"), work=tmp_path)
    assert [s.key for s in stages] == ["text_encoder", "1024x1024/vae_decoder", "1024x1024/unet", "1024x1024/refiner",
                                       "1024x1024/bundle", "1152x896/vae_decoder", "1152x896/unet", "1152x896/refiner",
                                       "1152x896/bundle"]
    bundle = stages[4]
    linked = {name for name, _ in bundle.links}
    assert "Stable_Diffusion_version_org_model-xl_refiner_chunk1.mlpackage" in linked
    assert "Stable_Diffusion_version_org_model-xl_text_encoder_2.mlpackage" in linked
    assert expected_models(options) == ["TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "UnetChunk1.mlmodelc",
                                        "UnetChunk2.mlmodelc", "VAEDecoder.mlmodelc", "UnetRefinerChunk1.mlmodelc",
                                        "UnetRefinerChunk2.mlmodelc"]
