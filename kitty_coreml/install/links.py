"""The commands linked where a shell finds them: settings.bin_dir/NAME -> this environment's console
script, and LINK_DIR/NAME -> settings.bin_dir/NAME. A wrong or dangling link is fixed; a real file is
never overwritten."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..errors import InstallError
from ..settings import Settings
from .progress import Reporter
from .step import Step

__all__ = ["LinkStep", "COMMANDS", "choose_link_dir"]

COMMANDS = ("kitty-coreml", "systemsculpt-local-imagegen")
_PREFERRED = (Path.home() / ".local" / "bin", Path("/opt/homebrew/bin"), Path("/usr/local/bin"))


def choose_link_dir(settings: Settings) -> Path | None:
    """KITTY_COREML_LINK_DIR (`none`: no links); else the first writable of ~/.local/bin,
    /opt/homebrew/bin, /usr/local/bin on PATH; else ~/.local/bin."""
    if settings.link_dir is not None:
        return None if str(settings.link_dir) == "none" else settings.link_dir.absolute()
    on_path = {p.expanduser().absolute() for p in settings.search_path}
    for folder in _PREFERRED:
        if folder in on_path and folder.is_dir() and os.access(folder, os.W_OK):
            return folder
    return _PREFERRED[0]


def _script_dir() -> Path:
    """Where this environment's console scripts are (next to its python)."""
    return Path(sys.executable).parent


def _link_problem(link: Path, target: Path) -> tuple[str, bool] | None:
    """(problem, fixable) for link, or None when it points at target."""
    if link.is_symlink():
        current = Path(os.readlink(link))
        if os.path.normpath(link.parent / current) == os.path.normpath(target.absolute()):
            return None
        return f"{link} points to {current}, not {target}", True
    if link.exists():
        return f"{link} is a real file, not a link to {target}", False
    return f"{link} is missing", True


class LinkStep(Step):
    name = "links"
    title = "link the commands"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.link_dir = choose_link_dir(settings)

    def pairs(self) -> list[tuple[Path, Path]]:
        """(link, target) in the order they must be made."""
        out = []
        for command in COMMANDS:
            in_bin = self.settings.bin_dir / command
            script = _script_dir() / command
            if in_bin.absolute() != script.absolute():
                out.append((in_bin, script))
            if self.link_dir is not None and self.link_dir.absolute() != self.settings.bin_dir.absolute():
                out.append((self.link_dir / command, in_bin))
        return out

    def problems(self) -> list[str]:
        out = []
        for link, target in self.pairs():
            problem = _link_problem(link, target)
            if problem:
                out.append(problem[0])
            elif not os.access(link, os.X_OK):
                out.append(f"{link} leads to no executable ({target} is missing)")
        return out

    def plan(self) -> dict[str, Any]:
        return {"links": [{"link": str(link), "target": str(target)} for link, target in self.pairs()],
                "link_dir": str(self.link_dir) if self.link_dir else None,
                "link_dir_on_path": self._on_path()}

    def _on_path(self) -> bool:
        return self.link_dir is None or self.link_dir in {p.expanduser().absolute() for p in self.settings.search_path}

    def run(self, reporter: Reporter) -> str:
        for link, target in self.pairs():
            if not os.access(target, os.X_OK):
                raise InstallError(f"{target} is missing or not executable, so {link} cannot lead to it",
                                   hint="reinstall kitty-coreml into this environment (installers/install.sh)")
            problem = _link_problem(link, target)
            if problem is None:
                continue
            message, fixable = problem
            if not fixable:
                raise InstallError(message, hint="move it away (or set KITTY_COREML_LINK_DIR), then run again")
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)  # atomic: the old link is never missing
            reporter.line(f"linked {link} -> {target}")
        if not self._on_path():
            reporter.line(f"note: {self.link_dir} is not on PATH; add it to your shell profile "
                          f"(export PATH=\"{self.link_dir}:$PATH\")")
        where = f" and {self.link_dir}" if self.link_dir else ""
        return f"commands linked in {self.settings.bin_dir}{where}"
