"""Real coremltools, here on Linux: the smoke pipeline's Unet, text encoder and VAE decoder traced and
converted to .mlpackage at two latent sizes, in the layout Apple's converter gives them, and the saved
packages' input and output names and shapes checked against what Apple's Swift pipeline reads at the
pinned commit e12202c:

- Unet.swift (predictions): inputs "sample", "timestep", "encoder_hidden_states"; the hidden states are
  the text encoder's output transposed [0, 2, None, 1] (StableDiffusionPipeline.swift toHiddenStates):
  (B, C, 1, S); the latent size is read from "sample"'s shape; the output is taken as the first feature
  (torch2coreml names it "noise_pred").
- TextEncoder.swift: its first input (torch2coreml's "input_ids", shape (1, S)) and the output
  "last_hidden_state" by name.
- Decoder.swift: its first input (torch2coreml's "z") and first output, an image (1, 3, H, W).

Compiling (.mlmodelc) and predicting need macOS; this checks what can be checked off it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import coremltools as ct

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")

LATENTS = [(8, 8), (8, 12)]
"""(height, width): the smoke model's native latent, and a non-square one that catches an H/W swap."""
BATCH = 2
"""Classifier-free guidance: the Swift pipeline sends the Unet a batch of 2."""
_DTYPES = {torch.float32: np.float32, torch.int32: np.int32}


class UnetForSwift(torch.nn.Module):
    """The Unet as the Swift pipeline calls it: hidden states in (B, C, 1, S)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        hidden = encoder_hidden_states.squeeze(2).transpose(1, 2)
        return self.unet(sample, timestep, hidden, return_dict=False)[0]


class TextEncoderForSwift(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        out = self.text_encoder(input_ids, return_dict=False)
        return out[0], out[1]


class DecoderForSwift(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z, return_dict=False)[0]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from kitty_coreml.install.smoke import build_smoke_pipeline

    pipe = build_smoke_pipeline(tmp_path_factory.mktemp("tokenizer"))
    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        module.eval()
    return pipe


def _convert(module, example, names: list[str], outputs: list[str], path: Path) -> Path:
    """Each module the way coremltools 9 converts it beside torch 2.13 and numpy 2: the text encoder
    traced with torch.jit (as Apple's converter does; transformers' CLIP exports with `alias` nodes it
    cannot read), the Unet and decoder through torch.export (traced, their attention blocks stop at an
    `int` cast that numpy 2 refuses; Apple's own venv pins numpy < 1.24)."""
    module = module.eval()
    with torch.no_grad():
        if isinstance(module, TextEncoderForSwift):
            program = torch.jit.trace(module, example)
            inputs = [ct.TensorType(name=name, shape=tensor.shape, dtype=_DTYPES[tensor.dtype])
                      for name, tensor in zip(names, example)]
        else:
            program = torch.export.export(module, example).run_decompositions({})
            inputs = None  # an exported program's inputs are forward()'s parameters, names included
    model = ct.convert(program, convert_to="mlprogram", inputs=inputs,
                       outputs=[ct.TensorType(name=name) for name in outputs],
                       minimum_deployment_target=ct.target.macOS13, skip_model_load=True)
    model.save(str(path))
    return path


def _described(path: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """(inputs, outputs) of a saved package: name -> shape, read back from its spec on disk."""
    spec = ct.utils.load_spec(str(path))

    def shapes(features):
        return {f.name: [int(d) for d in f.type.multiArrayType.shape] for f in features}

    return shapes(spec.description.input), shapes(spec.description.output)


def _names(features) -> list[str]:
    return list(features)


def test_text_encoder_package_is_what_the_swift_pipeline_reads(pipeline, tmp_path):
    sequence = pipeline.tokenizer.model_max_length
    hidden = pipeline.text_encoder.config.hidden_size
    ids = torch.zeros((1, sequence), dtype=torch.int32)
    path = _convert(TextEncoderForSwift(pipeline.text_encoder), (ids,), ["input_ids"], ["last_hidden_state", "pooled_outputs"],
                    tmp_path / "TextEncoder.mlpackage")
    inputs, outputs = _described(path)
    assert _names(inputs) == ["input_ids"] and inputs["input_ids"] == [1, sequence]
    assert outputs["last_hidden_state"] == [1, sequence, hidden]


@pytest.mark.parametrize(("latent_h", "latent_w"), LATENTS)
def test_unet_and_decoder_packages_are_what_the_swift_pipeline_reads(pipeline, tmp_path, latent_h, latent_w):
    unet, vae = pipeline.unet, pipeline.vae
    channels, context = unet.config.in_channels, unet.config.cross_attention_dim
    sequence = pipeline.tokenizer.model_max_length
    sample = torch.zeros((BATCH, channels, latent_h, latent_w))
    timestep = torch.full((BATCH,), 981.0)
    hidden = torch.zeros((BATCH, context, 1, sequence))
    unet_path = _convert(UnetForSwift(unet), (sample, timestep, hidden), ["sample", "timestep", "encoder_hidden_states"],
                         ["noise_pred"], tmp_path / "Unet.mlpackage")
    inputs, outputs = _described(unet_path)
    assert _names(inputs) == ["sample", "timestep", "encoder_hidden_states"]
    assert inputs["sample"] == [BATCH, channels, latent_h, latent_w]
    assert inputs["timestep"] == [BATCH]
    assert inputs["encoder_hidden_states"] == [BATCH, context, 1, sequence]
    assert _names(outputs) == ["noise_pred"] and outputs["noise_pred"] == [BATCH, channels, latent_h, latent_w]

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    z = torch.zeros((1, vae.config.latent_channels, latent_h, latent_w))
    decoder_path = _convert(DecoderForSwift(vae), (z,), ["z"], ["image"], tmp_path / "VAEDecoder.mlpackage")
    inputs, outputs = _described(decoder_path)
    assert _names(inputs) == ["z"] and inputs["z"] == [1, vae.config.latent_channels, latent_h, latent_w]
    assert _names(outputs) == ["image"] and outputs["image"] == [1, 3, latent_h * scale, latent_w * scale]
