"""`kitty-coreml models list`: the installed models (registry) with their disk use and state, and
the installable ones (catalog, plus the smoke model) with their pinned sources and sizes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import KittyError
from ..models import Registry, model_from_folder
from ..settings import Settings
from .catalog import load_catalog, pin_note

__all__ = ["list_models", "format_models"]

_SMOKE = {"name": "smoke", "repo": None, "file": None, "revision": None, "size_bytes": 0, "sha256": None,
          "family": "sd", "native_size": "64x64", "attention": None, "format": "diffusers",
          "description": "tiny random-weight pipeline for the portable engine; made locally, no download"}


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def list_models(settings: Settings) -> dict[str, Any]:
    registry = Registry(settings.registry_path)
    data = registry.read()
    catalog = load_catalog(settings)
    installed = []
    for name, entry in sorted(data["models"].items()):
        path = Path(entry.get("path", ""))
        item: dict[str, Any] = {"name": name, "path": str(path), "format": entry.get("format"),
                                "family": entry.get("family"), "width": entry.get("width"),
                                "height": entry.get("height"), "default": name == registry.default_name(),
                                "in_catalog": name in catalog or name == "smoke",
                                "disk_bytes": _disk_bytes(path) if path.exists() else 0, "ok": True,
                                "problem": None, "variants": [
                                    {"width": v.get("width"), "height": v.get("height"), "path": v.get("path"),
                                     "ok": Path(v.get("path", "")).is_dir()} for v in entry.get("variants", ())]}
        try:
            model = model_from_folder(path, name)
            item.update(format=model.format, family=model.family, width=model.width, height=model.height,
                        attention=model.attention)
            if model.format == "coreml":
                from ..resources import inspect_resources

                missing = inspect_resources(path).missing
                if missing:
                    item.update(ok=False, problem=f"missing {', '.join(missing)}")
        except KittyError as exc:
            item.update(ok=False, problem=exc.message)
        installed.append(item)
    names = {m["name"] for m in installed}
    available = [{"name": e.name, "repo": e.repo, "file": e.filename, "revision": e.revision,
                  "size_bytes": e.size_bytes, "sha256": e.sha256, "family": e.family,
                  "native_size": f"{e.width}x{e.height}", "attention": e.attention, "format": "coreml",
                  "description": e.description, "installed": e.name in names, "pin": pin_note(e) or "verified"}
                 for e in catalog.values()]
    available.append({**_SMOKE, "installed": "smoke" in names})
    downloads = settings.home / "downloads"
    partial = [{"file": p.name[:-len(".part")], "bytes": p.stat().st_size}
               for p in sorted(downloads.glob("*.part"))] if downloads.is_dir() else []
    return {"home": str(settings.home), "default": registry.default_name(), "installed": installed,
            "available": available, "partial_downloads": partial,
            "disk_bytes": sum(m["disk_bytes"] for m in installed) + sum(p["bytes"] for p in partial)}


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def format_models(report: dict[str, Any]) -> str:
    lines = [f"Installed models ({report['home']}):"]
    if not report["installed"]:
        lines.append("  none (run `kitty-coreml install`)")
    for m in report["installed"]:
        flag = "*" if m["default"] else " "
        state = "" if m["ok"] else f"  BROKEN: {m['problem']}"
        lines.append(f" {flag}{m['name']:<18} {m['format'] or '?':<9} {m['width']}x{m['height']:<6} "
                     f"{_size(m['disk_bytes']):>9}  {m['path']}{state}")
        for v in m.get("variants", ()):
            size = f"{v['width']}x{v['height']}"
            lines.append(f"   {'':<18} {'variant':<9} {size:<10} {'':>9}  {v['path']}{'' if v['ok'] else '  MISSING'}")
    lines.append("Available:")
    for a in report["available"]:
        mark = "installed" if a["installed"] else _size(a["size_bytes"]) if a["size_bytes"] else "local"
        source = f"{a['repo']}@{a['revision'][:12]}" if a["repo"] else "created locally"
        pin = f"  ({a['pin']})" if a.get("pin", "verified") != "verified" else ""
        lines.append(f"  {a['name']:<18} {a['native_size']:<10} {mark:>9}  {source}  {a['description']}{pin}")
    for p in report["partial_downloads"]:
        lines.append(f"  partial download: {p['file']} ({_size(p['bytes'])}; `kitty-coreml install` resumes it)")
    lines.append(f"Disk use: {_size(report['disk_bytes'])}  (* = default)")
    return "\n".join(lines)
