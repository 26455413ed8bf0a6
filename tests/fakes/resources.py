"""Fake compiled Core ML resource folders, laid out like Apple's converted bundles (CONTRACTS.md §2).

Each .mlmodelc is a folder with model.mil, coremldata.bin, weights/weight.bin (a few bytes) and a
metadata.json shaped like the one `coremlcompiler` writes, so code that reads sizes, families and
attention from metadata sees what it would see in a real bundle.
"""

import json
import shutil
from pathlib import Path

FAMILIES = ("sd", "sdxl", "sd3")
ATTENTIONS = ("split_einsum", "original")

# Sample tokenizer files: enough for the binary's loaders, not a real CLIP vocabulary.
VOCAB = {"!": 0, "a": 64, "c": 66, "t": 83, "a</w>": 320, "t</w>": 339, "ca": 2084,
         "cat</w>": 2368, "<|startoftext|>": 49406, "<|endoftext|>": 49407}
MERGES = "#version: 0.2\nc a\nca t</w>\n"


def tensor(name, shape, data_type="Float32", description=""):
    dims = " \u00d7 ".join(str(d) for d in shape)
    return {
        "hasShapeFlexibility": "0",
        "isOptional": "0",
        "dataType": data_type,
        "formattedType": f"MultiArray ({data_type} {dims})",
        "shortDescription": description,
        "shape": json.dumps(shape),
        "name": name,
        "type": "MultiArray",
    }


def histogram(attention, uses_attention):
    """mlProgramOperationTypeHistogram: split-einsum attention shows up as Ios16.einsum."""
    counts = {"Ios16.add": 146, "Ios16.mul": 58, "Ios16.conv": 98, "Ios16.cast": 4,
              "Ios16.layerNorm": 16, "Ios16.reshape": 64, "Transpose": 2}
    if uses_attention:
        counts["Ios16.softmax"] = 32
        if attention == "split_einsum":
            counts["Ios16.einsum"] = 512
        else:
            counts["Ios16.matmul"] = 64
    return counts


def write_model(folder, name, inputs, outputs, *, attention, uses_attention, description):
    model = folder / f"{name}.mlmodelc"
    (model / "weights").mkdir(parents=True)
    metadata = [{
        "shortDescription": description,
        "metadataOutputVersion": "3.0",
        "outputSchema": outputs,
        "version": "fake/kitty-coreml-test",
        "modelParameters": [],
        "author": "kitty-coreml tests",
        "specificationVersion": 7,
        "storagePrecision": "Float16",
        "license": "test fixture",
        "mlProgramOperationTypeHistogram": histogram(attention, uses_attention),
        "computePrecision": "Mixed (Float16, Float32, Int32)",
        "isUpdatable": "0",
        "availability": {"macOS": "13.0", "tvOS": "16.0", "visionOS": "1.0", "watchOS": "9.0",
                         "iOS": "16.0", "macCatalyst": "16.0"},
        "modelType": {"name": "MLModelType_mlProgram"},
        "inputSchema": inputs,
        "userDefinedMetadata": {"com.github.apple.coremltools.version": "7.1",
                                "com.github.apple.coremltools.source": "torch==2.1.0"},
        "generatedClassName": f"Fake_{name}",
        "method": "predict",
    }]
    (model / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
    (model / "model.mil").write_text(
        "program(1.0)\n[buildInfo = dict<tensor<string, []>, tensor<string, []>>"
        '({{"coremltools-version", "7.1"}})]\n{\n    func main<ios16>() {\n    } -> ()\n}\n')
    (model / "coremldata.bin").write_bytes(b"\x08\x07fake-coreml-" + name.encode())
    (model / "weights" / "weight.bin").write_bytes(bytes(64))


def text_encoder_outputs(hidden, xl_style):
    if xl_style:  # the SDXL / SD3 CLIP encoders name their outputs differently
        return [tensor("hidden_embeds", [1, 77, hidden]), tensor("pooled_outputs", [1, hidden])]
    return [tensor("last_hidden_state", [1, 77, hidden]), tensor("pooler_output", [1, hidden])]


def make_resources(path: Path, *, family="sd", width=512, height=512, attention="split_einsum",
                   encoder=False, safety=False, chunked=False, unet_batch=2, omit=()) -> Path:
    """Create a compiled resource folder at `path` and return it.

    family: "sd" (1.x/2.x), "sdxl" or "sd3". width/height: the image size the models were
    converted for (multiples of 8). encoder: add VAEEncoder.mlmodelc (img2img). safety: add
    SafetyChecker.mlmodelc. chunked: UnetChunk1/UnetChunk2 instead of Unet. unet_batch: the batch
    the Unet (SD, SDXL) was converted with: 2 is what torch2coreml writes, 1 a single-latent Unet. omit: names,
    relative to `path`, of files or folders to leave out (e.g. "vocab.json", "Unet.mlmodelc").
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, not {attention!r}")
    if width % 8 or height % 8:
        raise ValueError(f"width and height must be multiples of 8, not {width}x{height}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    latent_h, latent_w = height // 8, width // 8
    channels = 16 if family == "sd3" else 4
    batch = unet_batch

    def model(name, inputs, outputs, uses_attention=True, description=""):
        write_model(folder, name, inputs, outputs, attention=attention,
                    uses_attention=uses_attention, description=description)

    image = [tensor("image", [1, 3, height, width], description="Generated image")]
    if family == "sd":
        model("TextEncoder", [tensor("input_ids", [1, 77])], text_encoder_outputs(768, False))
        unet_inputs = [tensor("sample", [batch, 4, latent_h, latent_w], "Float16"),
                       tensor("timestep", [batch], "Float16"),
                       tensor("encoder_hidden_states", [batch, 768, 1, 77], "Float16")]
    elif family == "sdxl":
        model("TextEncoder", [tensor("input_ids", [1, 77])], text_encoder_outputs(768, True))
        model("TextEncoder2", [tensor("input_ids", [1, 77])], text_encoder_outputs(1280, True))
        unet_inputs = [tensor("sample", [batch, 4, latent_h, latent_w], "Float16"),
                       tensor("timestep", [batch], "Float16"),
                       tensor("encoder_hidden_states", [batch, 2048, 1, 77], "Float16"),
                       tensor("time_ids", [batch, 6], "Float16"),
                       tensor("text_embeds", [batch, 1280], "Float16")]
    else:
        model("TextEncoder", [tensor("input_ids", [1, 77])], text_encoder_outputs(768, True))
        model("TextEncoder2", [tensor("input_ids", [1, 77])], text_encoder_outputs(1280, True))
        model("MultiModalDiffusionTransformer",
              [tensor("latent_image_embeddings", [2, 16, latent_h, latent_w], "Float16"),
               tensor("timestep", [2], "Float16"),
               tensor("token_level_text_embeddings", [2, 4096, 1, 154], "Float16"),
               tensor("pooled_text_embeddings", [2, 2048], "Float16")],
              [tensor("denoiser_output", [2, 16, latent_h, latent_w], "Float16")])
        unet_inputs = None
    if unet_inputs is not None:
        noise = [tensor("noise_pred", [batch, 4, latent_h, latent_w], "Float16")]
        if chunked:
            model("UnetChunk1", unet_inputs, [tensor("input_blocks_out", [batch, 1280, latent_h // 8, latent_w // 8], "Float16")])
            model("UnetChunk2", [tensor("input_blocks_out", [batch, 1280, latent_h // 8, latent_w // 8], "Float16"),
                                 *unet_inputs[1:]], noise)
        else:
            model("Unet", unet_inputs, noise)
    model("VAEDecoder", [tensor("z", [1, channels, latent_h, latent_w])], image, uses_attention=False)
    if encoder:
        model("VAEEncoder", [tensor("sample", [1, 3, height, width])],
              [tensor("latent_dist", [1, 2 * channels, latent_h, latent_w])], uses_attention=False)
    if safety:
        model("SafetyChecker",
              [tensor("clip_input", [1, 3, 224, 224], "Float16"), tensor("images", [1, 512, 512, 3], "Float16"),
               tensor("adjustment", [1], "Float16")],
              [tensor("has_nsfw_concepts", [1], "Float16"), tensor("filtered_images", [1, 512, 512, 3], "Float16")])
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    (folder / "merges.txt").write_text(MERGES)

    for name in omit:
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            raise ValueError(f"omit names {name!r}, which this bundle does not contain")
    return folder
