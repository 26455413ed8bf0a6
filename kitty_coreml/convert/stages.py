"""The stages of a conversion, each one run of a child program with one output folder, so each is
resumable on its own: a single checkpoint to diffusers; the text encoder(s), once for every size; per
size the VAE decoder, the VAE encoder, the Unet, the refiner; per size the bundle (torch2coreml's
--bundle-resources-for-swift-cli, which compiles with `xcrun coremlcompiler` into Resources/).

torch2coreml names its packages `Stable_Diffusion_version_<model-version>_<sub-model>.mlpackage` (with
every `/` made `_`) in its -o folder, and bundles whatever packages of those names it finds there: the
bundle stage's folder gets links to the packages the other stages made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .options import ATTENTIONS, ConvertOptions, Size
from .venv import TORCH2COREML_MODULE

__all__ = ["Stage", "plan_stages", "package_name", "model_version", "describe", "OUT", "SINGLE_FILE_SCRIPT",
           "SOURCE_LINK", "REFINER_LINK"]

OUT = "{out}"
"""Stands for the stage's folder in argv: the run writes into a partial folder renamed when it is done."""
SINGLE_FILE_SCRIPT = Path(__file__).with_name("single_file.py")
# torch2coreml logs through `logging` to stderr; this is `2>&1` without a shell, so its progress lines
# arrive with stdout's.
_LAUNCH = ("import os, runpy; os.dup2(1, 2); "
           f"runpy.run_module({TORCH2COREML_MODULE!r}, run_name='__main__', alter_sys=True)")


SOURCE_LINK = "source"
REFINER_LINK = "refiner-source"
"""A folder source is given to torch2coreml as this link in the work folder (the converter's cwd):
torch2coreml puts the model version into its package names and compiles them through a shell
(`os.system`), so a path with a space or a `;` must never reach it. -o is relative for the same reason."""


def model_version(kind: str, value: str, link: str) -> str:
    """What torch2coreml gets as --model-version: a hub id as it is (letters, digits, `._-/`), a folder
    as its link, a converted single file as `diffusers`, all relative to the work folder."""
    return {"hub": value, "folder": link, "single_file": "diffusers"}[kind]


def package_name(model_version: str, sub_model: str) -> str:
    return f"Stable_Diffusion_version_{model_version}_{sub_model}.mlpackage".replace("/", "_")


@dataclass(frozen=True)
class Stage:
    key: str
    """Where it lives under the work folder, e.g. text_encoder or 1024x576/unet."""
    label: str
    argv: tuple[str, ...]
    expects: tuple[str, ...]
    """Names that must exist in the stage's folder when the program exited 0."""
    links: tuple[tuple[str, str], ...] = ()
    """(name in this stage's folder, key/name of another stage's output) made before the run."""
    size: Size | None = None
    kind: str = "convert"
    """diffusers, convert or bundle."""
    requires_mac: bool = False


@dataclass
class _Planner:
    options: ConvertOptions
    python: str
    work: Path
    stages: list[Stage] = field(default_factory=list)

    def model_version(self) -> str:
        return model_version(self.options.source.kind, self.options.source.value, SOURCE_LINK)

    def refiner_version(self) -> str:
        assert self.options.refiner is not None
        return model_version("folder" if Path(self.options.refiner).is_absolute() else "hub", self.options.refiner,
                             REFINER_LINK)

    def torch2coreml(self, model_version: str, *flags: str, size: Size | None = None) -> tuple[str, ...]:
        argv = [self.python, "-c", _LAUNCH, "--model-version", model_version,
                "--attention-implementation", ATTENTIONS[self.options.attention]]
        if size is not None:
            argv += ["--latent-h", str(size.latent_h), "--latent-w", str(size.latent_w)]
        if self.options.source.xl:
            argv.append("--xl-version")
        return (*argv, *flags, "-o", OUT)

    def quantize(self) -> tuple[str, ...]:
        nbits = self.options.quantize_nbits
        return ("--quantize-nbits", str(nbits)) if nbits else ()


def plan_stages(options: ConvertOptions, *, python: Path, work: Path) -> list[Stage]:
    """Every stage, in the order they run."""
    plan = _Planner(options, str(python), work)
    stages = plan.stages
    if options.source.kind == "single_file":
        argv = [str(python), str(SINGLE_FILE_SCRIPT), options.source.value, OUT]
        stages.append(Stage("diffusers", "single file to diffusers", (*argv, *(["--xl"] if options.source.xl else [])),
                            ("model_index.json",), kind="diffusers"))
    version = plan.model_version()
    encoders = ["text_encoder", "text_encoder_2"] if options.source.xl else ["text_encoder"]
    stages.append(Stage("text_encoder", "text encoder" + ("s" if options.source.xl else ""),
                        plan.torch2coreml(version, "--convert-text-encoder", *plan.quantize()),
                        tuple(package_name(version, e) for e in encoders)))
    for size in options.sizes:
        stages.extend(_size_stages(plan, version, size, encoders))
    return stages


def _size_stages(plan: _Planner, version: str, size: Size, encoders: list[str]) -> list[Stage]:
    options = plan.options
    at = size.label
    out: list[Stage] = [Stage(f"{at}/vae_decoder", f"{at} VAE decoder",
                              plan.torch2coreml(version, "--convert-vae-decoder", size=size),
                              (package_name(version, "vae_decoder"),), size=size)]
    links = [(package_name(version, e), f"text_encoder/{package_name(version, e)}") for e in encoders]
    links.append((package_name(version, "vae_decoder"), f"{at}/vae_decoder/{package_name(version, 'vae_decoder')}"))
    if options.vae_encoder:
        name = package_name(version, "vae_encoder")
        out.append(Stage(f"{at}/vae_encoder", f"{at} VAE encoder",
                         plan.torch2coreml(version, "--convert-vae-encoder", size=size), (name,), size=size))
        links.append((name, f"{at}/vae_encoder/{name}"))
    unet_parts = ["unet_chunk1", "unet_chunk2"] if options.chunk_unet else ["unet"]
    unet_flags = ["--convert-unet", *(["--chunk-unet"] if options.chunk_unet else []), *plan.quantize()]
    out.append(Stage(f"{at}/unet", f"{at} Unet", plan.torch2coreml(version, *unet_flags, size=size),
                     tuple(package_name(version, p) for p in unet_parts), size=size))
    links += [(package_name(version, p), f"{at}/unet/{package_name(version, p)}") for p in unet_parts]
    if options.refiner:
        refiner = plan.refiner_version()
        # Apple's --refiner-version converts the base Unet again in the same run; converting the refiner
        # as a model of its own (its README's advice) and linking it in as `refiner` avoids that.
        refiner_parts = ["unet_chunk1", "unet_chunk2"] if options.chunk_unet else ["unet"]
        out.append(Stage(f"{at}/refiner", f"{at} refiner Unet",
                         plan.torch2coreml(refiner, *unet_flags, size=size),
                         tuple(package_name(refiner, p) for p in refiner_parts), size=size))
        links += [(package_name(version, p.replace("unet", "refiner")), f"{at}/refiner/{package_name(refiner, p)}")
                  for p in refiner_parts]
    bundle_argv = [plan.python, "-c", _LAUNCH, "--model-version", version, "--bundle-resources-for-swift-cli"]
    if options.source.xl:
        bundle_argv.append("--xl-version")
    out.append(Stage(f"{at}/bundle", f"{at} compile and bundle", (*bundle_argv, "-o", OUT), ("Resources",),
                     links=tuple(links), size=size, kind="bundle", requires_mac=True))
    return out


def describe(argv: tuple[str, ...]) -> str:
    """argv for a person: the launcher shown as the module it runs."""
    shown = list(argv)
    if len(shown) > 2 and shown[1] == "-c" and shown[2] == _LAUNCH:
        shown[1:3] = ["-m", TORCH2COREML_MODULE]
    return " ".join(shown)
