"""Model archives from the Hugging Face hub: pinned, resumable, size- and sha256-checked.

huggingface_hub resolves the file (HEAD: the commit, the LFS sha256 and the size the hub reports);
the body is fetched here with HTTP ranges into `<file>.part`, so an interrupted download (Ctrl-C, a
dropped connection) continues where it stopped on the next run. huggingface_hub's own downloader
keeps no partial file across runs. HF_ENDPOINT (read by huggingface_hub) points it at a mirror.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import InstallError
from ..models import CatalogEntry
from .catalog import COMMIT_RE, SHA256_RE
from .progress import Reporter
from .step import read_json, sha256_file, write_json

__all__ = ["Remote", "resolve_remote", "fetch_archive", "check_free_space", "ChecksumMismatch",
           "SIZE_TOLERANCE"]

SIZE_TOLERANCE = 0.01
"""A catalog size without a known sha256 is rounded: the hub's size must lie within 1% of it."""
_NETWORK_HINT = "check the network (or HF_ENDPOINT) and run `kitty-coreml install` again; the download resumes"


@dataclass(frozen=True)
class Remote:
    entry: CatalogEntry
    commit: str
    size: int
    sha256: str
    """What the archive must hash to: the catalog's pin, equal to the hub's LFS hash when it reports one."""
    url: str
    """The resolve URL at the exact commit."""


class ChecksumMismatch(InstallError):
    """The downloaded bytes do not hash to the pinned sha256 (the file was deleted)."""


def _hub_error(entry: CatalogEntry, exc: Exception) -> InstallError:
    return InstallError(f"cannot reach {entry.repo}/{entry.filename} at {entry.revision} on the Hugging Face hub "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})", hint=_NETWORK_HINT)


def resolve_remote(entry: CatalogEntry) -> Remote:
    """Ask the hub about the pinned file and check it against the catalog before any byte is fetched."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(entry.repo, entry.filename, revision=entry.revision))
    except Exception as exc:  # huggingface_hub and httpx errors: one line, with what to do
        raise _hub_error(entry, exc) from None
    commit = meta.commit_hash or ""
    if COMMIT_RE.fullmatch(entry.revision) and commit != entry.revision:
        raise InstallError(f"the hub answered commit {commit or 'none'} for {entry.repo} at the pinned "
                           f"{entry.revision}", hint="HF_ENDPOINT may point at a wrong mirror")
    if not COMMIT_RE.fullmatch(commit):
        raise InstallError(f"the hub gave no commit for {entry.repo}/{entry.filename}",
                           hint="HF_ENDPOINT may point at something that is not a Hugging Face hub")
    size = meta.size
    if size is None or size <= 0:
        raise InstallError(f"the hub gave no size for {entry.repo}/{entry.filename}")
    hub_sha = (meta.etag or "").lower() if SHA256_RE.fullmatch((meta.etag or "").lower()) else None
    if entry.sha256 and hub_sha and hub_sha != entry.sha256:
        raise InstallError(f"the hub's sha256 of {entry.filename} at {commit[:12]} is {hub_sha}, but the catalog "
                           f"pins {entry.sha256}; refusing to download",
                           hint="the file changed upstream: update the catalog entry after checking it")
    expected = entry.sha256 or hub_sha
    if expected is None:
        raise InstallError(f"no sha256 to check {entry.filename} against: the catalog has none and the hub "
                           "reports no LFS hash", hint="add sha256 to the catalog entry")
    if abs(size - entry.size_bytes) > entry.size_bytes * SIZE_TOLERANCE:
        raise InstallError(f"the hub's {entry.filename} at {commit[:12]} has {size} bytes; the catalog expects "
                           f"about {entry.size_bytes}", hint="the file changed upstream: check the catalog entry")
    return Remote(entry=entry, commit=commit, size=size, sha256=expected,
                  url=hf_hub_url(entry.repo, entry.filename, revision=commit))


def check_free_space(folder: Path, needed: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise InstallError(f"not enough free disk space in {folder} for {what}: needs {needed / 1e9:.2f} GB, "
                           f"{free / 1e9:.2f} GB free",
                           hint="free some space or set KITTY_COREML_HOME to a bigger disk, then run again")


def fetch_archive(remote: Remote, dest: Path, reporter: Reporter, *, extra_space: int = 0) -> None:
    """Download remote into dest (resuming dest.part), check its size and sha256, then rename it into
    place. A wrong hash deletes the part and raises ChecksumMismatch."""
    part = dest.with_name(dest.name + ".part")
    marker = dest.with_name(dest.name + ".part.json")
    identity = {"repo": remote.entry.repo, "file": remote.entry.filename, "commit": remote.commit,
                "size": remote.size, "sha256": remote.sha256}
    if read_json(marker) != identity or (part.exists() and part.stat().st_size > remote.size):
        part.unlink(missing_ok=True)  # a part of another file, or longer than the file: start over
    have = part.stat().st_size if part.exists() else 0
    check_free_space(dest.parent, remote.size - have + extra_space, f"{remote.entry.filename}")
    write_json(marker, identity)
    if have < remote.size:
        _download(remote, part, have, reporter)
    got = part.stat().st_size
    if got != remote.size:
        raise InstallError(f"the download of {remote.entry.filename} stopped at {got} of {remote.size} bytes",
                           hint=_NETWORK_HINT)
    digest = sha256_file(part, reporter, f"checking {remote.entry.filename}")
    if digest != remote.sha256:
        part.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{remote.entry.filename} from {remote.entry.repo} hashes to {digest}, not the "
                               f"pinned {remote.sha256}; the download was deleted",
                               hint="run `kitty-coreml install` again to fetch it anew")
    part.replace(dest)
    marker.unlink(missing_ok=True)


def _download(remote: Remote, part: Path, have: int, reporter: Reporter) -> None:
    from huggingface_hub.utils import build_hf_headers, get_session

    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"
    if have:
        headers["Range"] = f"bytes={have}-"
    label = f"download {remote.entry.filename}"
    try:
        with get_session().stream("GET", remote.url, headers=headers, follow_redirects=True, timeout=60) as response:
            if response.status_code == 416:
                part.unlink(missing_ok=True)  # the server has fewer bytes than the part: start over next time
                raise InstallError(f"the server refused to resume {remote.entry.filename}; the partial file was "
                                   "deleted", hint=_NETWORK_HINT)
            if response.status_code not in (200, 206):
                raise InstallError(f"downloading {remote.entry.filename} from {remote.entry.repo} failed: HTTP "
                                   f"{response.status_code}", hint=_NETWORK_HINT)
            if response.status_code == 206:
                start = _range_start(response.headers.get("Content-Range", ""))
                if start != have:
                    raise InstallError(f"the server resumed {remote.entry.filename} at byte {start}, not {have}",
                                       hint=_NETWORK_HINT)
                mode = "ab"
            else:
                have, mode = 0, "wb"  # the server ignored the range: take the whole file
            with open(part, mode) as out, reporter.bar(label, remote.size, initial=have) as bar:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    out.flush()  # what arrived is on disk when Ctrl-C or a dropped connection ends the run
                    bar.update(len(chunk))
    except InstallError:
        raise
    except Exception as exc:  # a dropped connection: what arrived stays in the part, the next run resumes
        raise InstallError(f"the download of {remote.entry.filename} was interrupted "
                           f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})", hint=_NETWORK_HINT) from None


def _range_start(content_range: str) -> int | None:
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
