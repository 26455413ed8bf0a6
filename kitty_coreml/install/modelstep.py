"""One catalog model: the pinned archive downloaded (resumable, verified), extracted into a temporary
folder, validated with resources.py, renamed into settings.models_dir/NAME, registered in the model
registry and mapped in the Studio manifest. A receipt in the folder lists every file and its size, so
--verify names a file that went missing without hashing gigabytes. An entry whose pin is unverified
(install/catalog.py) gets the commit and sha256 the first install got recorded in HOME/pins.json; later
downloads must match them and --verify holds the installed folder to them."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InstallError, KittyError
from ..models import CatalogEntry, Registry, model_from_folder
from ..resources import inspect_resources, looks_like_coreml
from ..settings import Settings
from .catalog import pin_note, pins_path, record_pin, recorded_pin
from .download import ChecksumMismatch, fetch_archive, resolve_remote
from .progress import Reporter
from .step import Step, clear_stale, read_json, remove_tree, sha256_file, write_json

__all__ = ["ModelStep", "RECEIPT_NAME", "file_listing", "listing_problems", "registry_problems",
           "manifest_problems", "map_in_manifest"]

RECEIPT_NAME = ".kitty-install.json"


def file_listing(folder: Path) -> dict[str, int]:
    """relative path -> size of every file under folder (the receipt itself left out)."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != RECEIPT_NAME}


def listing_problems(folder: Path, files: dict[str, int]) -> list[str]:
    out = []
    for relative, size in files.items():
        path = folder / relative
        if not path.is_file():
            out.append(f"{path} is missing")
        elif path.stat().st_size != size:
            out.append(f"{path} has {path.stat().st_size} bytes, not {size}")
    return out


def registry_problems(settings: Settings, name: str, folder: Path) -> list[str]:
    entry = Registry(settings.registry_path).read()["models"].get(name)
    if entry is None:
        return [f"{name} is not registered in {settings.registry_path}"]
    if Path(entry.get("path", "")) != folder:
        return [f"{name} is registered at {entry.get('path')}, not {folder}"]
    return []


def _ratio_for(width: int, height: int) -> str | None:
    from ..studio import RATIO_SIZES, RATIO_TOLERANCE

    for label, (w, h) in RATIO_SIZES.items():
        if abs((width / height) / (w / h) - 1) <= RATIO_TOLERANCE:
            return label
    return None


def manifest_problems(manifest_path: Path, folder: Path) -> list[str]:
    """The Studio manifest must map this model's ratio to a complete resource folder (this one, or
    another the user chose)."""
    from ..studio import read_manifest

    try:
        model = model_from_folder(folder)
    except KittyError:
        return []  # the folder's own problems are reported already
    label = _ratio_for(model.width, model.height)
    if label is None:
        return []
    if not manifest_path.is_file():
        return [f"the Studio manifest {manifest_path} does not exist"]
    try:
        entry = read_manifest(manifest_path).ratios.get(label)
    except KittyError as exc:
        return [exc.message]
    if entry is None:
        return [f"the Studio manifest {manifest_path} maps no folder for {label}"]
    if not entry.resource_path.is_dir() or inspect_resources(entry.resource_path).missing:
        return [f"the Studio manifest {manifest_path} maps {label} to {entry.resource_path}, which is not a "
                "complete resource folder"]
    return []


def map_in_manifest(manifest_path: Path, folder: Path) -> None:
    """Map folder's ratio in the Studio manifest unless a complete folder is mapped for it already."""
    from ..studio import manifest_entry, read_manifest, write_manifest

    if not manifest_problems(manifest_path, folder):
        return
    model = model_from_folder(folder)
    label = _ratio_for(model.width, model.height)
    if label is None:
        return
    ratios: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if manifest_path.is_file():
        try:
            current = read_manifest(manifest_path)
            ratios, extra = dict(current.ratios), dict(current.extra)
        except KittyError:
            pass  # unreadable: written anew
    ratios[label] = manifest_entry(folder)
    write_manifest(manifest_path, ratios, extra=extra)


class ModelStep(Step):
    def __init__(self, settings: Settings, entry: CatalogEntry, manifest_path: Path):
        self.settings = settings
        self.entry = entry
        self.manifest_path = manifest_path
        self.name = f"model:{entry.name}"
        self.title = f"install model {entry.name}"
        self.target = settings.models_dir / entry.name
        self.downloads = settings.home / "downloads"
        self.archive = self.downloads / f"{entry.name}-{entry.revision[:12]}-{entry.filename}"

    def _receipt(self) -> dict[str, Any] | None:
        return read_json(self.target / RECEIPT_NAME)

    def _folder_problems(self) -> list[str]:
        if not self.target.is_dir():
            return [f"model {self.entry.name} is not installed ({self.target} does not exist)"]
        receipt = self._receipt()
        if receipt is None:
            return [f"{self.target} has no install receipt ({RECEIPT_NAME})"]
        pinned = {"repo": self.entry.repo, "file": self.entry.filename, "revision": self.entry.revision}
        got = {k: receipt.get(k) for k in pinned}
        if got != pinned:
            return [f"{self.target} was installed from {got}, not {pinned}"]
        if self.entry.sha256 and receipt.get("sha256") != self.entry.sha256:
            return [f"{self.target} was installed from an archive with sha256 {receipt.get('sha256')}, "
                    f"not {self.entry.sha256}"]
        out = listing_problems(self.target, receipt.get("files") or {})
        out += [f"{self.target}: {name} is missing" for name in inspect_resources(self.target).missing
                if not any(name.split(" ")[0] in problem for problem in out)]
        return out

    def _pin_problems(self) -> list[str]:
        """An unverified pin: the folder must hold the commit and sha256 recorded when it was installed."""
        if pin_note(self.entry) is None:
            return []
        pin = recorded_pin(self.settings, self.entry)
        if pin is None:
            return [f"{self.entry.name} has an unverified pin and no recorded commit and sha256 in "
                    f"{pins_path(self.settings)}"]
        receipt = self._receipt() or {}
        got, recorded = (receipt.get("commit"), receipt.get("sha256")), (pin["commit"], pin["sha256"])
        if got != recorded:
            return [f"{self.target} holds commit {got[0]} (sha256 {got[1]}), not the recorded commit "
                    f"{recorded[0]} (sha256 {recorded[1]})"]
        return []

    def problems(self) -> list[str]:
        out = self._folder_problems()
        if out:
            return out
        return self._pin_problems() + registry_problems(self.settings, self.entry.name, self.target) + \
            manifest_problems(self.manifest_path, self.target)

    def plan(self) -> dict[str, Any]:
        e = self.entry
        return {"model": e.name, "repo": e.repo, "revision": e.revision, "file": e.filename,
                "size_bytes": e.size_bytes, "sha256": e.sha256, "pin": pin_note(e) or "verified",
                "recorded": recorded_pin(self.settings, e), "family": e.family,
                "native_size": f"{e.width}x{e.height}", "attention": e.attention,
                "url": f"https://huggingface.co/{e.repo}/resolve/{e.revision}/{e.filename}",
                "installs": str(self.target)}

    def run(self, reporter: Reporter) -> str:
        if self._folder_problems():
            self._fetch_and_extract(reporter)
        elif pin_note(self.entry) and recorded_pin(self.settings, self.entry) is None:
            # installed before pins were recorded: the receipt holds what that verified download got
            receipt = self._receipt() or {}
            record_pin(self.settings, self.entry, commit=str(receipt.get("commit")),
                       sha256=str(receipt.get("sha256")), size=int(receipt.get("size") or 0))
        pin_problems = self._pin_problems()
        if pin_problems:
            raise InstallError(pin_problems[0], hint=f"delete {self.target} and run `kitty-coreml install` to fetch "
                                                     "the recorded archive again")
        model = model_from_folder(self.target, self.entry.name)
        if registry_problems(self.settings, self.entry.name, self.target):
            Registry(self.settings.registry_path).register(model)
        map_in_manifest(self.manifest_path, self.target)
        return f"{self.entry.name} installed at {self.target} ({model.width}x{model.height}, {model.family})"

    def _fetch_and_extract(self, reporter: Reporter) -> None:
        self.settings.models_dir.mkdir(parents=True, exist_ok=True)
        clear_stale(self.settings.models_dir, f".{self.entry.name}.tmp-")
        pin = recorded_pin(self.settings, self.entry) if pin_note(self.entry) else None
        # a recorded pin is the pin from then on: the same commit, the same bytes
        remote = resolve_remote(dataclasses.replace(self.entry, revision=pin["commit"], sha256=pin["sha256"])
                                if pin else self.entry)
        if self.archive.exists():
            if sha256_file(self.archive, reporter, f"checking {self.entry.filename}") != remote.sha256:
                reporter.line(f"{self.archive} is corrupt (sha256 differs): deleted, fetching it again")
                self.archive.unlink()
        if not self.archive.exists():
            reporter.line(f"downloading {self.entry.repo}/{self.entry.filename} at {remote.commit[:12]} "
                          f"({remote.size / 1e9:.2f} GB)")
            try:
                fetch_archive(remote, self.archive, reporter, extra_space=remote.size)
            except ChecksumMismatch as exc:
                reporter.line(f"refused: {exc.message}; fetching it once more")
                fetch_archive(remote, self.archive, reporter, extra_space=remote.size)
        staging = Path(tempfile.mkdtemp(dir=self.settings.models_dir, prefix=f".{self.entry.name}.tmp-"))
        try:
            _extract(self.archive, staging, reporter)
            root = _resource_root(staging, self.entry.filename)
            info = inspect_resources(root)
            if info.missing:
                raise InstallError(f"{self.entry.filename} lacks {', '.join(info.missing)}",
                                   hint="the archive is not a complete Core ML resource folder; check the catalog entry")
            if info.family != self.entry.family:
                raise InstallError(f"{self.entry.filename} holds a {info.family} model, the catalog says "
                                   f"{self.entry.family}")
            write_json(root / RECEIPT_NAME, {
                "repo": self.entry.repo, "file": self.entry.filename, "revision": self.entry.revision,
                "commit": remote.commit, "sha256": remote.sha256, "size": remote.size,
                "files": file_listing(root)})
            if self.target.exists():
                os.replace(self.target, staging / "replaced")
            os.replace(root, self.target)
            if pin_note(self.entry) and pin is None:
                record_pin(self.settings, self.entry, commit=remote.commit, sha256=remote.sha256, size=remote.size)
        finally:
            remove_tree(staging)
        self.archive.unlink(missing_ok=True)


def _extract(archive: Path, dest: Path, reporter: Reporter) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                    raise InstallError(f"{archive.name} holds {member.filename!r}, which points outside its folder; "
                                       "refusing to extract it")
            total = sum(m.file_size for m in members)
            with reporter.bar(f"extracting {archive.name}", total) as bar:
                for member in members:
                    target = dest / member.filename
                    if member.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as source, open(target, "wb") as out:
                        while block := source.read(4 * 1024 * 1024):
                            out.write(block)
                            bar.update(len(block))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise InstallError(f"{archive} is not a readable zip archive ({exc})",
                           hint="delete it and run `kitty-coreml install` again") from None


def _resource_root(staging: Path, filename: str) -> Path:
    """The shallowest folder of the extracted archive that holds .mlmodelc folders (Apple's archives
    nest it: STEM/ or STEM/compiled/)."""
    found = sorted((p for p in [staging, *staging.rglob("*")]
                    if p.is_dir() and p.suffix != ".mlmodelc" and looks_like_coreml(p)),
                   key=lambda p: len(p.parts))
    if not found:
        raise InstallError(f"{filename} holds no Core ML resource folder (no *.mlmodelc inside)")
    if len(found) > 1 and len(found[1].parts) == len(found[0].parts):
        raise InstallError(f"{filename} holds several resource folders: "
                           f"{', '.join(str(p.relative_to(staging)) for p in found[:3])}")
    return found[0]
