"""Apple's ml-stable-diffusion at the pinned commit, StableDiffusionSample built from it, the warm
worker built from swift_bridge/, both binaries installed into settings.bin_dir."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InstallError
from ..settings import ML_SD_COMMIT, Settings
from .progress import Reporter
from .step import Step, capture, clear_stale, read_json, remove_tree, run_program, sha256_file, write_json

__all__ = ["ML_SD_COMMIT", "SAMPLE_PRODUCT", "WORKER_PRODUCT", "MIN_SWIFT", "clone_dir", "swift_bridge_dir",
           "swift_too_old", "CloneStep", "SampleBuildStep", "WorkerBuildStep"]

"""The pinned commit (settings.ml_sd_commit defaults to it)."""
SAMPLE_PRODUCT = "StableDiffusionSample"
WORKER_PRODUCT = "kitty-coreml-worker"
_SWIFT_HINT = "install Xcode 15 or later, or its command line tools (`xcode-select --install`)"
MIN_SWIFT = (5, 9)
"""Xcode 15's Swift: ml-stable-diffusion 1.0.0 and later do not build with Xcode 14 (its issue #199)."""
_SWIFT_VERSION = re.compile(r"Swift version (\d+)\.(\d+)")


def swift_too_old(version_output: str) -> str | None:
    """Why the Swift that printed `version_output` (`swift --version`) cannot build the pinned library,
    or None when it can or the text names no version (the build then speaks for itself)."""
    found = _SWIFT_VERSION.search(version_output)
    if found is None or (int(found.group(1)), int(found.group(2))) >= MIN_SWIFT:
        return None
    return (f"Swift {found.group(1)}.{found.group(2)} is too old: ml-stable-diffusion at the pinned commit needs "
            f"Xcode 15 or later (Swift {MIN_SWIFT[0]}.{MIN_SWIFT[1]}+)")


def clone_dir(settings: Settings) -> Path:
    return settings.home / "src" / "ml-stable-diffusion"


def swift_bridge_dir(settings: Settings) -> Path | None:
    """swift_bridge/ of the kitty-coreml clone: KITTY_COREML_SOURCE_DIR, else the folder this package
    was installed from (an editable install or a run from the clone)."""
    candidates = [settings.source_dir] if settings.source_dir else [Path(__file__).resolve().parents[2]]
    for root in candidates:
        if (root / "swift_bridge" / "Package.swift").is_file():
            return (root / "swift_bridge").absolute()
    return None


def _state_path(settings: Settings) -> Path:
    return settings.home / "install-state.json"


def _git(clone: Path, *args: str) -> tuple[int, str]:
    return capture(["git", "-C", str(clone), *args])


class CloneStep(Step):
    name = "ml-stable-diffusion"
    title = "clone ml-stable-diffusion"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = clone_dir(settings)
        self.commit = settings.ml_sd_commit

    def problems(self) -> list[str]:
        if not (self.path / ".git").exists():
            return [f"ml-stable-diffusion is not cloned at {self.path}"]
        status, head = _git(self.path, "rev-parse", "HEAD")
        if status != 0:
            return [f"{self.path} is not a readable git clone"]
        out = []
        if head != self.commit:
            out.append(f"{self.path} is at {head[:12] or 'no commit'}, not the pinned {self.commit[:12]}")
        changed = self._local_changes()
        if changed:
            out.append(f"{self.path} has local changes ({changed})")
        return out

    def _local_changes(self) -> str:
        _, dirty = _git(self.path, "status", "--porcelain", "--untracked-files=no")
        return ", ".join(line[3:] for line in dirty.splitlines()[:3])

    def plan(self) -> dict[str, Any]:
        url = self.settings.ml_sd_repo_url
        if (self.path / ".git").exists():
            commands = [["git", "-C", str(self.path), "fetch", url, "+refs/heads/*:refs/remotes/kitty/*"],
                        ["git", "-C", str(self.path), "checkout", "--detach", self.commit]]
        else:
            commands = [["git", "clone", "--no-checkout", url, str(self.path)],
                        ["git", "-C", str(self.path), "checkout", "--detach", self.commit]]
        return {"repo": url, "commit": self.commit, "path": str(self.path), "commands": commands}

    def run(self, reporter: Reporter) -> str:
        url = self.settings.ml_sd_repo_url
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        clear_stale(parent, f".{self.path.name}.tmp-")
        if self.path.exists() and not (self.path / ".git").exists():
            raise InstallError(f"{self.path} exists but is not a git clone",
                               hint="move it away, then run `kitty-coreml install` again")
        if not self.path.exists():
            staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.path.name}.tmp-"))
            run_program(["git", "clone", "--progress", "--no-checkout", url, str(staging / "repo")],
                        label="git clone", reporter=reporter,
                        hint="check the network or KITTY_COREML_ML_SD_REPO, then run again")
            self._checkout(staging / "repo", url, reporter)
            os.replace(staging / "repo", self.path)
            remove_tree(staging)
            return f"cloned {url} at {self.commit[:12]}"
        changed = self._local_changes()
        if changed:
            raise InstallError(f"{self.path} has local changes ({changed})",
                               hint="commit or discard them, or delete the folder, then run again")
        self._checkout(self.path, url, reporter)
        return f"moved {self.path} to {self.commit[:12]}"

    def _checkout(self, repo: Path, url: str, reporter: Reporter) -> None:
        if _git(repo, "cat-file", "-e", f"{self.commit}^{{commit}}")[0] != 0:
            run_program(["git", "-C", str(repo), "fetch", "--progress", url, "+refs/heads/*:refs/remotes/kitty/*"],
                        label="git fetch", reporter=reporter, hint="check the network, then run again")
            if _git(repo, "cat-file", "-e", f"{self.commit}^{{commit}}")[0] != 0:
                raise InstallError(f"the pinned commit {self.commit} is not in {url}",
                                   hint="point KITTY_COREML_ML_SD_REPO at apple/ml-stable-diffusion or a full mirror")
        run_program(["git", "-C", str(repo), "-c", "advice.detachedHead=false", "checkout", "--detach", "-q",
                     self.commit], label="git checkout", reporter=reporter)


class _BuildStep(Step):
    """A Swift product built in release mode and installed (with any resource bundles next to it)
    into settings.bin_dir; its receipt records what it was built from and the installed binary's hash."""

    product = ""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.title = f"build {self.product}"
        self.name = self.product
        self.installed = settings.bin_dir / self.product

    def package_dir(self) -> Path | None:
        raise NotImplementedError

    def build_argv(self) -> list[str]:
        raise NotImplementedError

    def source_id(self) -> str | None:
        raise NotImplementedError

    def problems(self) -> list[str]:
        if not self.installed.is_file():
            return [f"{self.installed} is missing"]
        if not os.access(self.installed, os.X_OK):
            return [f"{self.installed} is not executable"]
        receipt = (read_json(_state_path(self.settings)) or {}).get("binaries", {}).get(self.product)
        if not isinstance(receipt, dict):
            return [f"{self.installed} was not installed by `kitty-coreml install` (no receipt)"]
        source = self.source_id()
        if source is not None and receipt.get("source") != source:
            return [f"{self.installed} was built from {receipt.get('source')}, not {source}"]
        if receipt.get("sha256") != sha256_file(self.installed):
            return [f"{self.installed} changed since it was installed (sha256 differs from the receipt)"]
        return []

    def plan(self) -> dict[str, Any]:
        package = self.package_dir()
        return {"product": self.product, "package": str(package) if package else None,
                "commands": [self.build_argv()], "installs": str(self.installed), "source": self.source_id()}

    def run(self, reporter: Reporter) -> str:
        package = self.package_dir()
        if package is None or not package.is_dir():
            raise InstallError(f"cannot build {self.product}: its Swift package is not at {package}")
        try:
            run_program(self.build_argv(), label=f"swift build {self.product}", reporter=reporter, cwd=package,
                        hint=_SWIFT_HINT)
        except InstallError:
            # Xcode 14 fails inside the library's sources: say why rather than quote a compiler error
            status, version = capture(["swift", "--version"])
            too_old = swift_too_old(version) if status == 0 else None
            if too_old:
                raise InstallError(f"swift build {self.product} failed: {too_old}", hint=_SWIFT_HINT) from None
            raise
        built_dir = package / ".build" / "release"
        built = built_dir / self.product
        if not built.is_file():
            raise InstallError(f"swift build succeeded but {built} does not exist")
        self.settings.bin_dir.mkdir(parents=True, exist_ok=True)
        for bundle in sorted(built_dir.glob("*.bundle")) + sorted(built_dir.glob("*.resources")):
            _replace_copy(bundle, self.settings.bin_dir / bundle.name)
        _replace_copy(built, self.installed)
        self.installed.chmod(0o755)
        state = read_json(_state_path(self.settings)) or {}
        state.setdefault("binaries", {})[self.product] = {"source": self.source_id(),
                                                          "sha256": sha256_file(self.installed)}
        write_json(_state_path(self.settings), state)
        return f"built and installed {self.installed}"


def _replace_copy(source: Path, dest: Path) -> None:
    """Copy a file or folder to dest through a temporary name, then rename over what was there."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    remove_tree(tmp)
    if source.is_dir():
        shutil.copytree(source, tmp, symlinks=True)
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        remove_tree(old)
    else:
        shutil.copy2(source, tmp)
        os.replace(tmp, dest)


class SampleBuildStep(_BuildStep):
    product = SAMPLE_PRODUCT

    def package_dir(self) -> Path:
        return clone_dir(self.settings)

    def build_argv(self) -> list[str]:
        return ["swift", "build", "-c", "release", "--product", SAMPLE_PRODUCT]

    def source_id(self) -> str:
        return f"ml-stable-diffusion@{self.settings.ml_sd_commit}"


class WorkerBuildStep(_BuildStep):
    product = WORKER_PRODUCT

    def not_applicable(self) -> str | None:
        if swift_bridge_dir(self.settings) is None:
            return ("the swift_bridge/ sources are not here (set KITTY_COREML_SOURCE_DIR to the kitty-coreml "
                    "clone, as installers/install.sh does)")
        return None

    def package_dir(self) -> Path | None:
        return swift_bridge_dir(self.settings)

    def build_argv(self) -> list[str]:
        return ["swift", "build", "-c", "release", "--package-path", str(self.package_dir() or "swift_bridge")]

    def source_id(self) -> str | None:
        package = self.package_dir()
        if package is None:
            return None
        digest = hashlib.sha256()
        for path in sorted(p for p in package.rglob("*") if p.is_file()):
            relative = path.relative_to(package)
            if relative.parts[0].startswith("."):
                continue  # .build, .swiftpm: outputs and editor state, not sources
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
        return f"swift_bridge@sha256:{digest.hexdigest()[:16]}"
