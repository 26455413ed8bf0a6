"""`kitty-coreml convert`: make Core ML bundles of a model at the sizes asked, with Apple's converter."""

from __future__ import annotations

import typer

from .app import app


@app.command("convert")
def convert(
    source: str = typer.Argument(..., metavar="SOURCE",
                                 help="A Hugging Face id (org/name), a diffusers folder, or a single "
                                      ".safetensors/.ckpt checkpoint."),
    size: list[str] = typer.Option(None, "--size", "-s", metavar="WxH",
                                   help="Image size to convert for (repeatable), multiples of 64, e.g. 1024x576."),
    name: str = typer.Option(None, "--name", help="The model's name in the registry (default: from SOURCE)."),
    attention: str = typer.Option(None, "--attention", metavar="original|split-einsum",
                                  help="Attention implementation (default: split-einsum for the Neural Engine, "
                                       "original for cpuAndGPU/cpuOnly)."),
    compute_units: str = typer.Option("cpuAndNeuralEngine", "--compute-units",
                                      help="Where the model will run: all, cpuAndNeuralEngine, cpuAndGPU, cpuOnly "
                                           "(chooses the default attention)."),
    quantize_nbits: int = typer.Option(None, "--quantize-nbits", metavar="6|8", help="Palettize the weights."),
    chunk_unet: bool = typer.Option(False, "--chunk-unet", help="Split the Unet in two (iOS-class memory)."),
    refiner: str = typer.Option(None, "--refiner", metavar="SOURCE", help="Also convert this SDXL refiner."),
    vae_encoder: bool = typer.Option(False, "--vae-encoder", help="Also convert the VAE encoder (img2img)."),
    xl: bool = typer.Option(None, "--xl/--no-xl", help="SOURCE is Stable Diffusion XL (default: read from a "
                                                       "folder's model_index.json or a .safetensors header; a hub "
                                                       "id with `xl` in its name is; a .ckpt needs --xl)."),
    timeout: float = typer.Option(None, "--timeout", metavar="SECONDS",
                                  help="Limit for one stage (default KITTY_COREML_CONVERT_TIMEOUT_S, 14400)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Convert a model to Core ML bundles at fixed sizes.

    The bundles are registered as size variants of one model.

    Runs Apple's torch2coreml (pinned ml-stable-diffusion, its own venv) one sub-model at a time, each a
    supervised child process: Ctrl-C stops it, and running the same command again resumes where it
    stopped. Each bundle is checked (files, compiled models, size, attention) before it is registered.
    Compiling needs macOS with Xcode: elsewhere it makes the .mlpackage files and says what is left.
    """
    from ..convert import ConvertOptions, convert as run_convert
    from ..install.progress import Reporter
    from .common import echo, load_settings, print_json

    settings = load_settings()
    options = ConvertOptions.build(source, size or [], name=name, attention=attention, compute_units=compute_units,
                                   quantize_nbits=quantize_nbits, chunk_unet=chunk_unet, refiner=refiner,
                                   vae_encoder=vae_encoder, xl=xl,
                                   timeout_s=settings.convert_timeout_s if timeout is None else timeout)
    report = run_convert(options, settings, Reporter(settings.progress))
    if as_json:
        print_json(report.to_dict())
        return
    for variant in report.variants:
        echo(f"{options.name} {variant['width']}x{variant['height']} ({variant['attention']}): {variant['path']}")
    if report.needs_mac:
        echo(f"not finished here: {report.needs_mac}")
    elif report.variants:
        echo(f"registered {options.name} with {len(report.variants)} size variant(s)")


def print_ratios_report(settings, manifest_path, models: list[str] | None, *, as_json: bool) -> None:
    """`install --ratios`: its work is install/ratios.py; this prints what it did."""
    from ..errors import InstallError
    from ..install.progress import Reporter
    from ..install.ratios import build_ratios
    from .common import echo, print_json

    if models and len(models) > 1:
        raise InstallError(f"--ratios: got --model {' --model '.join(models)}; allowed: one installed model")
    report = build_ratios(settings, manifest_path, Reporter(settings.progress), model=models[0] if models else None)
    if as_json:
        print_json(report)
    elif report["needs_mac"]:
        echo(f"not finished here: {report['needs_mac']}")
    else:
        for variant in report["variants"]:
            echo(f"{report['name']} {variant['width']}x{variant['height']}: {variant['path']}")
        echo(f"wrote the Studio manifest {report['manifest']}")
