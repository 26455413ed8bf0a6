"""A single .safetensors/.ckpt checkpoint to a diffusers folder, with diffusers' own single-file loader.

Run by the converter venv's Python as a script (`python single_file.py CHECKPOINT OUT [--xl]`): it
imports only what that venv has (torch, diffusers), never kitty_coreml. The weights are saved as the
fp16 variant, which is what torch2coreml loads (`variant="fp16", use_safetensors=True`).
Exit 0 when OUT holds the pipeline; on failure a one-line message on stderr and exit 1."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--xl", action="store_true", help="the checkpoint is Stable Diffusion XL")
    args = parser.parse_args(argv)
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline_class = StableDiffusionXLPipeline if args.xl else StableDiffusionPipeline
    print(f"Loading {args.checkpoint} with {pipeline_class.__name__}.from_single_file", flush=True)
    try:
        pipe = pipeline_class.from_single_file(args.checkpoint, torch_dtype=torch.float16)
    except Exception as exc:  # the message, not a traceback: the parent shows it as one line
        sys.stderr.write(f"cannot load {args.checkpoint}: {type(exc).__name__}: {exc}\n")
        return 1
    print(f"Saving the fp16 diffusers pipeline to {args.out}", flush=True)
    pipe.save_pretrained(args.out, variant="fp16", safe_serialization=True)
    print("Done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
