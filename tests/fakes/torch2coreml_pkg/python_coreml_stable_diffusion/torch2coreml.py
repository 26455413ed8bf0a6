"""Test double of Apple's `python -m python_coreml_stable_diffusion.torch2coreml` at the pinned commit
e12202c (CONTRACTS.md §3), from its source:

- its argparse flags (the same names, choices and defaults; --model-version required: exit 2);
- main's order: make -o, load the pipeline (a hub id from the local hub cache only, as with no network;
  a folder directly; the fp16 variant is required, as `variant="fp16"` is), convert the vae decoder,
  vae encoder, unet, text encoder(s), quantize every package that exists, bundle;
- its package names `Stable_Diffusion_version_<model-version>_<sub-model>.mlpackage` (`/` -> `_`), and
  "Skipping export because ... already exists" for a package already there;
- its logging: `INFO:__main__:...` lines on stderr;
- --bundle-resources-for-swift-cli: Resources/ in -o; every known package found is compiled through
  `os.system("xcrun coremlcompiler compile SRC Resources")` WITHOUT checking the result, then
  shutil.move(Resources/<stem>.mlmodelc, Resources/<Target>.mlmodelc) (a FileNotFoundError traceback,
  exit 1, when nothing was written); vocab.json and merges.txt saved from a download whose status is not
  checked either;
- an exception is a traceback and exit 1.

The packages are stand-ins: a folder with Manifest.json, Data/com.apple.CoreML/model.mlmodel holding a
JSON description of the inputs and outputs the real converter gives (names, shapes, attention), and
weights. The fake `xcrun` (torch2coreml_xcrun.py) compiles that description into metadata.json.

Faults on demand (environment):
  FAKE_TORCH2COREML_FAIL_AT=<sub-model>   raise while converting it, leaving a half-written package
  FAKE_TORCH2COREML_HANG_AT=<sub-model>   start a grandchild, write PIDS to $FAKE_TORCH2COREML_PIDS, hang
  FAKE_TORCH2COREML_TOKENIZER_404=1       the tokenizer "download" returns the hub's error page
  FAKE_TORCH2COREML_LOG=<file>            append each run's argv (JSON) to it
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from tests.fakes.resources import MERGES, VOCAB, tensor  # noqa: E402

logging.basicConfig()
logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)

ATTENTION_IMPLEMENTATIONS = ("ORIGINAL", "SPLIT_EINSUM", "SPLIT_EINSUM_V2")
COMPUTE_UNITS = ("ALL", "CPU_AND_GPU", "CPU_ONLY", "CPU_AND_NE")
BUNDLE_TARGETS = [("text_encoder", "TextEncoder"), ("text_encoder_2", "TextEncoder2"), ("vae_decoder", "VAEDecoder"),
                  ("vae_encoder", "VAEEncoder"), ("unet", "Unet"), ("unet_chunk1", "UnetChunk1"),
                  ("unet_chunk2", "UnetChunk2"), ("refiner", "UnetRefiner"), ("refiner_chunk1", "UnetRefinerChunk1"),
                  ("refiner_chunk2", "UnetRefinerChunk2"), ("mmdit", "MultiModalDiffusionTransformer"),
                  ("control-unet", "ControlledUnet"), ("control-unet_chunk1", "ControlledUnetChunk1"),
                  ("control-unet_chunk2", "ControlledUnetChunk2"), ("safety_checker", "SafetyChecker")]


def _get_out_path(args, submodule_name):
    fname = f"Stable_Diffusion_version_{args.model_version}_{submodule_name}.mlpackage"
    fname = fname.replace("/", "_")
    return os.path.join(args.o, fname)


class Pipeline:
    """What the converter reads from a loaded DiffusionPipeline: the components' configs."""

    def __init__(self, folder):
        self.folder = Path(folder)
        index = json.loads((self.folder / "model_index.json").read_text())
        self.class_name = index.get("_class_name")
        for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
            if part in index:
                weights = list((self.folder / part).glob("*.safetensors"))
                if weights and not any(".fp16." in p.name for p in weights):
                    raise ValueError(f"You are trying to load the model files of the `variant=fp16`, but no such "
                                     f"modeling files are available. The default model files: "
                                     f"{sorted(p.name for p in weights)} will be loaded instead.")
        self.unet = json.loads((self.folder / "unet" / "config.json").read_text())
        self.vae = json.loads((self.folder / "vae" / "config.json").read_text())
        self.text_encoder = json.loads((self.folder / "text_encoder" / "config.json").read_text())
        te2 = self.folder / "text_encoder_2" / "config.json"
        self.text_encoder_2 = json.loads(te2.read_text()) if te2.is_file() else None


def _hub_snapshot(repo_id):
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        commit = None
    if commit and (repo / "snapshots" / commit / "model_index.json").is_file():
        return repo / "snapshots" / commit
    raise OSError(f"We couldn't connect to 'https://huggingface.co' to load this file, couldn't find it in the "
                  f"cached files and it looks like {repo_id} is not the path to a directory containing a file named "
                  "model_index.json.")


def get_pipeline(args):
    logger.info(f"Initializing DiffusionPipeline with {args.model_version}..")
    folder = Path(args.model_version)
    pipe = Pipeline(folder if folder.is_dir() else _hub_snapshot(args.model_version))
    logger.info(f"Done. Pipeline in effect: {pipe.class_name}")
    return pipe


def _fault(name, submodule):
    return os.environ.get(name) == submodule


def _write_package(out_path, submodule, inputs, outputs, args, uses_attention=True):
    """Save a package the way coremltools' MLModel.save does: into the path directly (not atomic)."""
    data = Path(out_path) / "Data" / "com.apple.CoreML"
    (data / "weights").mkdir(parents=True)
    (Path(out_path) / "Manifest.json").write_text(json.dumps({"fileFormatVersion": "1.0.0", "itemInfoEntries": {}}))
    (data / "weights" / "weight.bin").write_bytes(bytes(256))
    if _fault("FAKE_TORCH2COREML_FAIL_AT", submodule):
        raise RuntimeError(f"fake failure while converting {submodule}")
    if _fault("FAKE_TORCH2COREML_HANG_AT", submodule):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        Path(os.environ["FAKE_TORCH2COREML_PIDS"]).write_text(f"{os.getpid()} {child.pid}\n")
        while True:
            time.sleep(1)
    spec = {"inputs": inputs, "outputs": outputs, "uses_attention": uses_attention,
            "attention": "split_einsum" if args.attention_implementation.startswith("SPLIT_EINSUM") else "original",
            "quantize_nbits": None}
    (data / "model.mlmodel").write_text(json.dumps(spec))


def _convert(args, submodule, inputs, outputs, uses_attention=True, out_path=None):
    out_path = out_path or _get_out_path(args, submodule)
    if os.path.exists(out_path):
        logger.info(f"Skipping export because {out_path} already exists")
        logger.info(f"Loading model from {out_path}")
        return
    logger.info(f"Converting {submodule} to CoreML..")
    _write_package(out_path, submodule, inputs, outputs, args, uses_attention)
    logger.info(f"Saved {submodule} into {out_path}")


def _latent(args, pipe):
    size = pipe.unet["sample_size"]
    return args.latent_h or size, args.latent_w or size


def convert_vae_decoder(pipe, args):
    lh, lw = _latent(args, pipe)
    channels = pipe.vae.get("latent_channels", 4)
    _convert(args, "vae_decoder", [tensor("z", [1, channels, lh, lw])], [tensor("image", [1, 3, lh * 8, lw * 8])],
             uses_attention=False)


def convert_vae_encoder(pipe, args):
    lh, lw = _latent(args, pipe)
    channels = pipe.vae.get("latent_channels", 4)
    _convert(args, "vae_encoder", [tensor("z", [1, 3, lh * 8, lw * 8])],
             [tensor("latent", [1, 2 * channels, lh, lw])], uses_attention=False)


def _unet_io(pipe, args):
    lh, lw = _latent(args, pipe)
    batch = 1 if args.unet_batch_one else 2
    inputs = [tensor("sample", [batch, pipe.unet["in_channels"], lh, lw], "Float16"),
              tensor("timestep", [batch], "Float16"),
              tensor("encoder_hidden_states", [batch, pipe.unet["cross_attention_dim"], 1, 77], "Float16")]
    if args.xl_version:
        inputs += [tensor("time_ids", [batch, 6], "Float16"), tensor("text_embeds", [batch, 1280], "Float16")]
    return inputs, [tensor("noise_pred", [batch, pipe.unet["out_channels"], lh, lw], "Float16")]


def convert_unet(pipe, args, model_name=None):
    unet_name = model_name or "unet"
    out_path = _get_out_path(args, unet_name)
    chunks = [out_path.replace(".mlpackage", f"_chunk{i + 1}.mlpackage") for i in range(2)]
    if args.chunk_unet and all(os.path.exists(c) for c in chunks):
        logger.info("`unet` chunks already exist, skipping conversion.")
        return
    inputs, outputs = _unet_io(pipe, args)
    _convert(args, unet_name, inputs, outputs)
    if args.chunk_unet:
        logger.info(f"Chunking {model_name} in two approximately equal MLModels")
        middle = [tensor("input_blocks_out", [2, 1280, 1, 1], "Float16")]
        _write_package(chunks[0], f"{unet_name}_chunk1", inputs, middle, args)
        _write_package(chunks[1], f"{unet_name}_chunk2", middle + inputs[1:], outputs, args)


def convert_text_encoder(config, submodule, args):
    hidden = config["hidden_size"]
    names = ("hidden_embeds", "pooled_outputs") if args.xl_version else ("last_hidden_state", "pooled_outputs")
    _convert(args, submodule, [tensor("input_ids", [1, 77], "Int32")],
             [tensor(names[0], [1, 77, hidden]), tensor(names[1], [1, hidden])])
    logger.info(f"Saved text_encoder into {_get_out_path(args, submodule)}")


def quantize_weights(args):
    for model_name in ["text_encoder", "text_encoder_2", "unet", "refiner", "control-unet"]:
        logger.info(f"Quantizing {model_name} to {args.quantize_nbits}-bit precision")
        out_path = _get_out_path(args, model_name)
        if os.path.exists(out_path):
            spec_path = Path(out_path) / "Data" / "com.apple.CoreML" / "model.mlmodel"
            spec = json.loads(spec_path.read_text())
            spec["quantize_nbits"] = args.quantize_nbits
            spec_path.write_text(json.dumps(spec))
            logger.info("Done")
        else:
            logger.info(f"Skipped quantizing {model_name} (Not found at {out_path})")


def _compile_coreml_model(source_model_path, output_dir, final_name):
    target_path = os.path.join(output_dir, f"{final_name}.mlmodelc")
    if os.path.exists(target_path):
        logger.warning(f"Found existing compiled model at {target_path}! Skipping..")
        return target_path
    logger.info(f"Compiling {source_model_path}")
    source_model_name = os.path.basename(os.path.splitext(source_model_path)[0])
    os.system(f"xcrun coremlcompiler compile {source_model_path} {output_dir}")
    compiled_output = os.path.join(output_dir, f"{source_model_name}.mlmodelc")
    shutil.move(compiled_output, target_path)
    return target_path


def _download(url):
    if os.environ.get("FAKE_TORCH2COREML_TOKENIZER_404") == "1":
        return b"Entry not found"
    return json.dumps(VOCAB).encode() if url.endswith(".json") else MERGES.encode()


def bundle_resources_for_swift_cli(args):
    resources_dir = os.path.join(args.o, "Resources")
    if not os.path.exists(resources_dir):
        os.makedirs(resources_dir, exist_ok=True)
        logger.info(f"Created {resources_dir} for Swift CLI assets")
    for source_name, target_name in BUNDLE_TARGETS:
        source_path = _get_out_path(args, source_name)
        if os.path.exists(source_path):
            target_path = _compile_coreml_model(source_path, resources_dir, target_name)
            logger.info(f"Compiled {source_path} to {target_path}")
        else:
            logger.warning(f"{source_path} not found, skipping compilation to {target_name}.mlmodelc")
    logger.info("Downloading and saving tokenizer vocab.json")
    with open(os.path.join(resources_dir, "vocab.json"), "wb") as f:
        f.write(_download(args.text_encoder_vocabulary_url))
    logger.info("Done")
    logger.info("Downloading and saving tokenizer merges.txt")
    with open(os.path.join(resources_dir, "merges.txt"), "wb") as f:
        f.write(_download(args.text_encoder_merges_url))
    logger.info("Done")
    return resources_dir


def main(args):
    log = os.environ.get("FAKE_TORCH2COREML_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(sys.argv[1:]) + "\n")
    os.makedirs(args.o, exist_ok=True)
    pipe = get_pipeline(args)
    logger.info(f"Attention implementation in effect: AttentionImplementations.{args.attention_implementation}")
    if args.convert_vae_decoder:
        logger.info("Converting vae_decoder")
        convert_vae_decoder(pipe, args)
        logger.info("Converted vae_decoder")
    if args.convert_vae_encoder:
        logger.info("Converting vae_encoder")
        convert_vae_encoder(pipe, args)
        logger.info("Converted vae_encoder")
    if args.convert_unet:
        logger.info("Converting unet")
        convert_unet(pipe, args)
        logger.info("Converted unet")
    if args.convert_text_encoder:
        logger.info("Converting text_encoder")
        convert_text_encoder(pipe.text_encoder, "text_encoder", args)
        logger.info("Converted text_encoder")
    if args.convert_text_encoder and pipe.text_encoder_2 is not None:
        logger.info("Converting text_encoder_2")
        convert_text_encoder(pipe.text_encoder_2, "text_encoder_2", args)
        logger.info("Converted text_encoder_2")
    if args.convert_unet and args.refiner_version is not None:
        logger.info("Converting refiner")
        original = args.model_version
        args.model_version = args.refiner_version
        refiner = get_pipeline(args)
        args.model_version = original
        convert_unet(refiner, args, model_name="refiner")
        logger.info("Converted refiner")
    if args.quantize_nbits is not None:
        logger.info(f"Quantizing weights to {args.quantize_nbits}-bit precision")
        quantize_weights(args)
        logger.info(f"Quantized weights to {args.quantize_nbits}-bit precision")
    if args.bundle_resources_for_swift_cli:
        logger.info("Bundling resources for the Swift CLI")
        bundle_resources_for_swift_cli(args)
        logger.info("Bundled resources for the Swift CLI")


def parser_spec():
    parser = argparse.ArgumentParser()
    for flag in ("--convert-text-encoder", "--convert-vae-decoder", "--convert-vae-encoder", "--convert-unet",
                 "--convert-mmdit", "--convert-safety-checker"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--convert-controlnet", nargs="*", type=str)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--refiner-version", default=None)
    parser.add_argument("--custom-vae-version", type=str, default=None)
    parser.add_argument("--compute-unit", choices=COMPUTE_UNITS, default="ALL")
    parser.add_argument("--latent-h", type=int, default=None)
    parser.add_argument("--latent-w", type=int, default=None)
    parser.add_argument("--text-token-sequence-length", type=int, default=None)
    parser.add_argument("--text-encoder-hidden-size", type=int, default=None)
    parser.add_argument("--attention-implementation", choices=ATTENTION_IMPLEMENTATIONS, default="SPLIT_EINSUM")
    parser.add_argument("-o", default=os.getcwd())
    parser.add_argument("--check-output-correctness", action="store_true")
    parser.add_argument("--chunk-unet", action="store_true")
    parser.add_argument("--quantize-nbits", default=None, choices=(1, 2, 4, 6, 8), type=int)
    parser.add_argument("--unet-support-controlnet", action="store_true")
    parser.add_argument("--unet-batch-one", action="store_true")
    parser.add_argument("--include-t5", action="store_true")
    parser.add_argument("--bundle-resources-for-swift-cli", action="store_true")
    parser.add_argument("--text-encoder-vocabulary-url",
                        default="https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/vocab.json")
    parser.add_argument("--text-encoder-merges-url",
                        default="https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/merges.txt")
    parser.add_argument("--text-encoder-t5-url", default="")
    parser.add_argument("--text-encoder-t5-config-url", default="")
    parser.add_argument("--text-encoder-t5-data-url", default="")
    parser.add_argument("--min-deployment-target", default="macOS13")
    parser.add_argument("--xl-version", action="store_true")
    parser.add_argument("--sd3-version", action="store_true")
    return parser


if __name__ == "__main__":
    parser = parser_spec()
    args = parser.parse_args()
    main(args)
