"""The commands where a shell finds them: settings.bin_dir/NAME is a small launcher that runs this
environment's console script with KITTY_COREML_HOME set to the install's home (so PREFIX/bin/kitty-coreml
works with no variable set), and LINK_DIR/NAME links to it. A wrong or dangling link is fixed; a real
file that is not one of our launchers is never overwritten."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import InstallError
from ..settings import Settings
from .progress import Reporter
from .step import Step, read_json, write_json

__all__ = ["LinkStep", "COMMANDS", "HOST_SEARCHED", "HOST_LINKABLE", "choose_link_dir", "host_link_commands"]

COMMANDS = ("kitty-coreml", "systemsculpt-local-imagegen")
_PREFERRED = (Path.home() / ".local" / "bin", Path("/opt/homebrew/bin"), Path("/usr/local/bin"))
HOST_SEARCHED = (Path("/opt/homebrew/bin"), Path("/usr/local/bin"), Path("/usr/bin"), Path("/bin"),
                 Path("/opt/local/bin"))
"""The folders the Studio host adds to PATH (src/studio/StudioSandboxRunner.ts): an Obsidian started from
the Dock has no shell PATH, so a command only in ~/.local/bin is not found."""
HOST_LINKABLE = HOST_SEARCHED[:2]
"""Of those, where an install may link (Homebrew's folders; the others belong to the system)."""


def choose_link_dir(settings: Settings, *, system: str | None = None,
                    host_folders: tuple[Path, ...] = HOST_LINKABLE) -> Path | None:
    """KITTY_COREML_LINK_DIR (`none`: no links); else the folder the last install used; on macOS the first
    writable of /opt/homebrew/bin, /usr/local/bin (the Studio host searches them, on PATH or not); else the
    first writable of ~/.local/bin, /opt/homebrew/bin, /usr/local/bin on PATH; else ~/.local/bin."""
    if settings.link_dir is not None:
        return None if str(settings.link_dir) == "none" else settings.link_dir.absolute()
    chosen = (read_json(_state_path(settings)) or {}).get("link_dir")
    if isinstance(chosen, str):
        return None if chosen == "none" else Path(chosen)  # where the last install linked them
    if (system or platform.system()) == "Darwin":
        for folder in host_folders:
            if folder.is_dir() and os.access(folder, os.W_OK):
                return folder
    on_path = {p.expanduser().absolute() for p in settings.search_path}
    for folder in _PREFERRED:
        if folder in on_path and folder.is_dir() and os.access(folder, os.W_OK):
            return folder
    return _PREFERRED[0]


def host_link_commands(link_dir: Path | None, bin_dir: Path, host_folders: tuple[Path, ...] = HOST_SEARCHED,
                       target: Path = HOST_LINKABLE[1]) -> list[str]:
    """The exact commands that make systemsculpt-local-imagegen findable by the Studio host, when the
    links went elsewhere; [] when the host finds it already."""
    if link_dir is not None and link_dir.absolute() in host_folders:
        return []
    command = "systemsculpt-local-imagegen"
    return [f"sudo mkdir -p {shlex.quote(str(target))}",
            f"sudo ln -sf {shlex.quote(str(bin_dir / command))} {shlex.quote(str(target / command))}"]


def _state_path(settings: Settings) -> Path:
    return settings.home / "install-state.json"


def _script_dir() -> Path:
    """Where this environment's console scripts are (next to its python)."""
    return Path(sys.executable).parent


_MARK = "# kitty-coreml launcher"


def _launcher_text(command: str, home: Path, script: Path) -> str:
    return (f"#!/bin/sh\n{_MARK}, written by `kitty-coreml install`: {command} with its home in {home}\n"
            f"if [ -z \"${{KITTY_COREML_HOME:-}}\" ]; then KITTY_COREML_HOME={shlex.quote(str(home))}; "
            "export KITTY_COREML_HOME; fi\n"
            f"exec {shlex.quote(str(script))} \"$@\"\n")


def _head(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(200)
    except OSError:
        return ""


def _launcher_problem(path: Path, text: str) -> str | None:
    if path.is_symlink() or not path.is_file():
        return f"{path} is missing" if not path.is_symlink() else f"{path} is a link, not a launcher"
    if _head(path) != text[:200] or path.read_text(encoding="utf-8", errors="replace") != text:
        return f"{path} is not the launcher of this installation"
    if not os.access(path, os.X_OK):
        return f"{path} is not executable"
    return None


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

    def __init__(self, settings: Settings, *, system: str | None = None,
                 host_folders: tuple[Path, ...] = HOST_LINKABLE):
        self.settings = settings
        self.system = system or platform.system()
        self.link_dir = choose_link_dir(settings, system=self.system, host_folders=host_folders)
        self.host_folders = (*host_folders, *HOST_SEARCHED)

    def launchers(self) -> list[tuple[Path, str]]:
        """(launcher path, its content) per command."""
        out = []
        for command in COMMANDS:
            script = _script_dir() / command
            out.append((self.settings.bin_dir / command, _launcher_text(command, self.settings.home, script)))
        return out

    def pairs(self) -> list[tuple[Path, Path]]:
        """(link, target): LINK_DIR/NAME -> the launcher."""
        if self.link_dir is None or self.link_dir.absolute() == self.settings.bin_dir.absolute():
            return []
        return [(self.link_dir / command, self.settings.bin_dir / command) for command in COMMANDS]

    def problems(self) -> list[str]:
        out = [problem for path, text in self.launchers() if (problem := _launcher_problem(path, text))]
        recorded = (read_json(_state_path(self.settings)) or {}).get("link_dir")
        if recorded != (str(self.link_dir) if self.link_dir else "none"):
            out.append(f"the link folder of this installation is {recorded or 'not recorded'}, "
                       f"not {self.link_dir or 'none'}")
        for link, target in self.pairs():
            problem = _link_problem(link, target)
            if problem:
                out.append(problem[0])
            elif not os.access(link, os.X_OK):
                out.append(f"{link} leads to no executable ({target} is missing)")
        return out

    def plan(self) -> dict[str, Any]:
        return {"launchers": [str(path) for path, _ in self.launchers()],
                "links": [{"link": str(link), "target": str(target)} for link, target in self.pairs()],
                "link_dir": str(self.link_dir) if self.link_dir else None,
                "link_dir_on_path": self._on_path(), "studio_host_commands": self._host_commands()}

    def _host_commands(self) -> list[str]:
        if self.system != "Darwin":
            return []  # the Studio host runs only on macOS
        return host_link_commands(self.link_dir, self.settings.bin_dir, self.host_folders)

    def _on_path(self) -> bool:
        return self.link_dir is None or self.link_dir in {p.expanduser().absolute() for p in self.settings.search_path}

    def run(self, reporter: Reporter) -> str:
        for command in COMMANDS:
            if not os.access(_script_dir() / command, os.X_OK):
                raise InstallError(f"{_script_dir() / command} is missing or not executable",
                                   hint="reinstall kitty-coreml into this environment (installers/install.sh)")
        for path, text in self.launchers():
            if not _launcher_problem(path, text):
                continue
            if path.exists() and not path.is_symlink() and _MARK not in _head(path):
                raise InstallError(f"{path} is a real file, not a kitty-coreml launcher",
                                   hint="move it away, then run again")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            tmp.chmod(0o755)
            os.replace(tmp, path)
            reporter.line(f"wrote {path}")
        for link, target in self.pairs():
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
        state = read_json(_state_path(self.settings)) or {}
        state["link_dir"] = str(self.link_dir) if self.link_dir else "none"
        write_json(_state_path(self.settings), state)
        if not self._on_path():
            reporter.line(f"note: {self.link_dir} is not on PATH; add it to your shell profile "
                          f"(export PATH=\"{self.link_dir}:$PATH\")")
        commands = self._host_commands()
        if commands:
            reporter.line(f"note: the Studio host (Obsidian started from the Dock) looks for commands only in "
                          f"{', '.join(str(p) for p in HOST_SEARCHED)}; to use systemsculpt-local-imagegen from "
                          f"Studio, run: {' && '.join(commands)}")
        where = f" and {self.link_dir}" if self.link_dir else ""
        return f"commands linked in {self.settings.bin_dir}{where}"
