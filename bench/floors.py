"""Each path of kitty-coreml as a ratio to its floor, all measured in the same run (alternating rounds,
medians), printed as one JSON object:

* S3 job (mock engine, `rclone serve s3`) vs the same job into the local store, and what S3 adds per job vs
  a warm boto3 client's two PUTs (PNG + sidecar) of the same bytes;
* publishing through the outbox vs a plain boto3 loop (the same files, the same client settings);
* a repeated /latest?limit=36 (S3Store.list) at each gallery size vs one ListObjectsV2 call, with its calls;
* a warm image (orchestrator + warm diffusers worker, smoke model) vs a direct diffusers pipe() call;
* `kitty-coreml generate --dry-run` and the Studio provider's start (`--help`) vs `python -c pass` and
  a minimal typer app.

Sizes are flags and small by default (the machine may be shared):
    .venv/bin/python bench/floors.py [--rounds 5] [--jobs 10] [--publish 40] [--galleries 300,3000]
                                     [--steps 4] [--only s3_job,publish,latest,warm_image,start]
The issue's figures use --galleries 300,3000,30000.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kitty_coreml.request import GenerationRequest  # noqa: E402
from kitty_coreml.settings import Settings  # noqa: E402
from kitty_coreml.storage.base import new_key, sidecar_key  # noqa: E402
from tests.s3server import S3Server  # noqa: E402

BIN = Path(sys.executable).parent
SECTIONS = ("s3_job", "publish", "latest", "warm_image", "start")


def _seconds(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _alternate(rounds: int, **actions: Callable[[], Any]) -> dict[str, float]:
    """Median seconds of each action, run in alternating rounds so drifts in machine load hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(rounds):
        for name, action in actions.items():
            times[name].append(_seconds(action))
    return {name: statistics.median(values) for name, values in times.items()}


def _env(home: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KITTY_COREML_", "S3_", "FAKE_SD_"))}
    return {**clean, "KITTY_COREML_HOME": str(home), "KITTY_COREML_PROGRESS": "none", **extra}


def bench_s3_job(root: Path, server: S3Server, args) -> dict[str, Any]:
    from kitty_coreml.orchestrator import generate

    bucket = server.create_bucket()
    local = Settings.from_env(_env(root / "job-local", KITTY_COREML_ENGINE="mock"))
    s3 = Settings.from_env(_env(root / "job-s3", KITTY_COREML_ENGINE="mock", **server.env(bucket)))
    request = GenerationRequest(prompt="a red cube", width=256, height=256, steps=1, seed=1)
    sample = generate(request, local).images[0]  # also warms imports and the engine's code
    png = Path(sample.path).read_bytes()
    meta = Path(sample.path).with_suffix(".json").read_bytes()
    client = server.client()

    def two_puts() -> None:
        key = new_key("images/")
        client.put_object(Bucket=bucket, Key=key, Body=png, ContentType="image/png")
        client.put_object(Bucket=bucket, Key=sidecar_key(key), Body=meta, ContentType="application/json")

    generate(request, s3)  # the process's S3 client is made once, here
    medians = _alternate(args.jobs, local_job=lambda: generate(request, local), s3_job=lambda: generate(request, s3),
                         two_puts=two_puts)
    return {"ms": {k: round(v * 1000, 2) for k, v in medians.items()},
            "ratios": {"s3_job_vs_local_job": medians["s3_job"] / medians["local_job"],
                       "s3_added_vs_two_puts": (medians["s3_job"] - medians["local_job"]) / medians["two_puts"]},
            "size": {"jobs": args.jobs, "png_bytes": len(png)}}


def bench_publish(root: Path, server: S3Server, args) -> dict[str, Any]:
    from kitty_coreml.storage.outbox import publish_item, stage
    from kitty_coreml.storage.s3 import S3Store

    bucket = server.create_bucket()
    store = S3Store(bucket=bucket, endpoint_url=server.endpoint, access_key=server.access_key,
                    secret_key=server.secret_key)
    plain = store.client  # the same client settings: what differs is only the outbox around the PUTs
    png = os.urandom(400_000)  # about a compressed 512x512 image
    outbox_items = [stage(root / "publish-outbox", new_key("images/"), png, {"index": i}) for i in range(args.publish)]
    plain_items = [stage(root / "publish-plain", new_key("images/"), png, {"index": i}) for i in range(args.publish)]

    def plain_publish(item) -> None:
        plain.put_object(Bucket=bucket, Key=item.key, Body=item.png.read_bytes(), ContentType="image/png")
        plain.put_object(Bucket=bucket, Key=sidecar_key(item.key), Body=item.sidecar.read_bytes(),
                         ContentType="application/json")

    # alternating image by image: the machine's load drifts faster than a round of many images
    times: dict[str, list[float]] = {"outbox": [], "plain_boto3": []}
    for outbox_item, plain_item in zip(outbox_items, plain_items):
        times["outbox"].append(_seconds(lambda: publish_item(store, outbox_item)))
        times["plain_boto3"].append(_seconds(lambda: plain_publish(plain_item)))
    rates = {name: 1 / statistics.median(values) for name, values in times.items()}
    return {"images_per_s": {k: round(v, 1) for k, v in rates.items()},
            "ratios": {"publish_vs_plain_boto3": rates["outbox"] / rates["plain_boto3"]},
            "size": {"images": args.publish, "png_bytes": len(png)}}


def _write_gallery(server: S3Server, bucket: str, images: int) -> None:
    """Objects written straight into rclone's folder (rclone serves what the folder holds): 30,000 images
    in seconds instead of minutes of PUTs. One image every 10 s, the newest 10 s ago."""
    server.create_bucket(bucket)
    folder = server.data / bucket / "images"
    folder.mkdir()
    now = datetime.now(timezone.utc)
    for index in range(images):
        key = new_key("", now - timedelta(seconds=10 + 10 * index))
        (folder / key).write_bytes(b"png")
        (folder / sidecar_key(key)).write_bytes(b"{}")


def bench_latest(root: Path, server: S3Server, args) -> dict[str, Any]:
    from kitty_coreml.storage.s3 import S3Store

    ratios, figures = {}, {}
    for images in args.galleries:
        bucket = f"gallery-{images}"
        _write_gallery(server, bucket, images)
        store = S3Store(bucket=bucket, endpoint_url=server.endpoint, access_key=server.access_key,
                        secret_key=server.secret_key)
        calls: list[int] = []
        store.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: calls.append(1))
        first_s = _seconds(lambda: store.list(36))
        first_calls = len(calls)
        calls.clear()
        client = store.client
        medians = _alternate(args.rounds, repeated=lambda: store.list(36),
                             one_call=lambda: client.list_objects_v2(Bucket=bucket, Prefix="images/", MaxKeys=1000))
        repeated_calls = (len(calls) - args.rounds) / args.rounds  # one_call's own calls are counted too
        ratios[f"latest36_at_{images}_vs_one_list_call"] = medians["repeated"] / medians["one_call"]
        figures[str(images)] = {"first_ms": round(first_s * 1000, 1), "first_calls": first_calls,
                                "repeated_ms": round(medians["repeated"] * 1000, 2),
                                "repeated_calls": repeated_calls, "one_call_ms": round(medians["one_call"] * 1000, 2)}
    return {"figures": figures, "ratios": ratios, "size": {"galleries": args.galleries}}


def bench_warm_image(root: Path, args) -> dict[str, Any]:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from kitty_coreml.engines import create_engine
    from kitty_coreml.install.smoke import create_smoke_model
    from kitty_coreml.orchestrator import generate

    settings = Settings.from_env(_env(root / "warm", KITTY_COREML_ENGINE="diffusers"))
    model = create_smoke_model(settings)
    engine = create_engine("diffusers", settings)
    diffusers_logging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(str(model.path), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False, torch_dtype=torch.float32)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    request = GenerationRequest(prompt="a red cube", steps=args.steps, seed=1, model="smoke", engine="diffusers",
                                compute_units="cpuOnly")

    def direct() -> None:
        with torch.inference_mode():
            pipe(prompt="a red cube", num_inference_steps=args.steps, guidance_scale=7.5, width=size, height=size,
                 generator=torch.Generator(device="cpu").manual_seed(1), output_type="pil")

    try:
        generate(request, settings, engine=engine)  # loads the model into the warm worker
        direct()
        medians = _alternate(args.rounds, warm_image=lambda: generate(request, settings, engine=engine),
                             direct_pipe=direct)
    finally:
        engine.close()
    return {"ms": {k: round(v * 1000, 1) for k, v in medians.items()},
            "ratios": {"warm_image_vs_direct_pipe": medians["warm_image"] / medians["direct_pipe"]},
            "size": {"steps": args.steps, "image": f"{size}x{size}", "model": "smoke"}}


_TYPER_APP = """import typer
app = typer.Typer()
@app.command()
def hello(name: str = "x") -> None:
    print(name)
app()
"""


def bench_start(root: Path, args) -> dict[str, Any]:
    from tests.fakes import make_resources, write_fake_binary

    typer_app = root / "typer_app.py"
    typer_app.write_text(_TYPER_APP)
    env = _env(root / "start", KITTY_COREML_SAMPLE_BIN=str(write_fake_binary(root)),
               KITTY_COREML_RESOURCE_PATH=str(make_resources(root / "model")))

    def run(*argv: str) -> Callable[[], None]:
        return lambda: subprocess.run(list(argv), env=env, check=True, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    commands = {"python_pass": run(sys.executable, "-c", "pass"),
                "typer_app": run(sys.executable, str(typer_app), "--name", "y"),
                "generate_dry_run": run(str(BIN / "kitty-coreml"), "generate", "a red cube", "--dry-run"),
                "studio_start": run(str(BIN / "systemsculpt-local-imagegen"), "--help")}
    for command in commands.values():
        command()  # the file cache, once
    medians = _alternate(args.rounds, **commands)
    ratios = {}
    for name in ("generate_dry_run", "studio_start"):
        ratios[f"{name}_vs_python_pass"] = medians[name] / medians["python_pass"]
        ratios[f"{name}_vs_typer_app"] = medians[name] / medians["typer_app"]
    return {"ms": {k: round(v * 1000, 1) for k, v in medians.items()},
            "above_python_pass_ms": {name: round((medians[name] - medians["python_pass"]) * 1000, 1)
                                     for name in ("typer_app", "generate_dry_run", "studio_start")},
            "ratios": ratios, "size": {"rounds": args.rounds}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per comparison")
    parser.add_argument("--jobs", type=int, default=10, help="jobs per kind in the S3-job comparison")
    parser.add_argument("--publish", type=int, default=40, help="images published per kind")
    parser.add_argument("--galleries", default="300,3000", help="gallery sizes (images) for /latest")
    parser.add_argument("--steps", type=int, default=4, help="steps of the warm-image comparison")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run, comma-separated")
    args = parser.parse_args()
    args.galleries = [int(size) for size in args.galleries.split(",") if size.strip()]
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: got {','.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    report: dict[str, Any] = {"benchmark": "floors", "ratios": {}, "sections": {}}
    with tempfile.TemporaryDirectory(prefix="kitty-floors-") as scratch:
        root = Path(scratch)
        with S3Server(root / "s3") as server:
            for name in only:
                if name in ("s3_job", "publish", "latest"):
                    result = globals()[f"bench_{name}"](root, server, args)
                else:
                    result = globals()[f"bench_{name}"](root, args)
                report["ratios"].update({k: round(v, 3) for k, v in result.pop("ratios").items()})
                report["sections"][name] = result
    print(json.dumps(report))


if __name__ == "__main__":
    main()
