"""Per-image time of stable-diffusion.cpp and diffusers on the same model, in one run, as one JSON object.

Both load the same weights: the random-weight SD 1.5 model (kitty_coreml/install/sd15_random.py, built
once per machine, never downloaded). Each engine runs in this process with the same thread count,
the same size, steps, guidance and DPM++ 2M sampler; rounds alternate so drifts in machine load hit
both alike; the figure is the median seconds per image, after one warm-up image each (the first call
of each engine pays one-time setup).

    .venv/bin/python bench/engines.py [--size 64] [--steps 4] [--rounds 3] [--threads N]

sd.cpp computes with the weights as the file stores them (fp16; `--weights q8_0` converts on load);
diffusers on the CPU computes in fp32 (what the diffusers worker does there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kitty_coreml.install.sd15_random import cached_random_sd15, pipeline_from_file  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image width and height, a multiple of 64")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--weights", default="default", help="sd.cpp weight type on load (default: as stored)")
    args = parser.parse_args()
    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):  # their notices are not figures
        os.environ.setdefault(name, "error")

    import stable_diffusion_cpp as sd
    import torch

    torch.set_num_threads(args.threads)
    model_file = cached_random_sd15()
    started = time.perf_counter()
    engine = sd.StableDiffusion(model_path=str(model_file), n_threads=args.threads, wtype=args.weights,
                                verbose=False)
    sdcpp_load = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        pipe = pipeline_from_file(model_file, Path(scratch) / "tokenizer")
        diffusers_load = time.perf_counter() - started

    def run_sdcpp(seed: int) -> None:
        engine.generate_image(prompt=PROMPT, width=args.size, height=args.size, sample_steps=args.steps,
                              cfg_scale=7.5, sample_method="dpm++2m", scheduler="discrete", seed=seed,
                              progress_callback=lambda *_: None)

    def run_diffusers(seed: int) -> None:
        with torch.inference_mode():
            pipe(PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps, guidance_scale=7.5,
                 generator=torch.Generator("cpu").manual_seed(seed), output_type="pil")

    runs = {"sdcpp": run_sdcpp, "diffusers": run_diffusers}
    for action in runs.values():
        action(0)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(args.rounds):
        for name, action in runs.items():
            started = time.perf_counter()
            action(round_index + 1)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({
        "model": "random-weight SD 1.5 architecture (860M UNet, 123M CLIP-L text encoder, 84M VAE)",
        "size": f"{args.size}x{args.size}", "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
        "sampler": "DPM++ 2M", "sdcpp_weights": args.weights,
        "versions": {"stable-diffusion-cpp-python": sd.__version__, "torch": torch.__version__},
        "load_s": {"sdcpp": round(sdcpp_load, 3), "diffusers": round(diffusers_load, 3)},
        "per_image_s": {name: round(value, 4) for name, value in medians.items()},
        "sdcpp_vs_diffusers": round(medians["sdcpp"] / medians["diffusers"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
