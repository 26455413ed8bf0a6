#!/usr/bin/env bash
# One-shot installer: a virtual environment under the prefix with kitty-coreml installed from this
# clone, the commands linked into PREFIX/bin, then `kitty-coreml install` (binary, warm worker, models,
# links). Idempotent: run it again to resume or repair. Every failure is one line saying what to do.
set -euo pipefail

PROG="install.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(cd "$HERE/.." && pwd)"
PREFIX="${HOME}/.kitty-coreml"
PYTHON=""
PASS=()

usage() {
  cat <<USAGE
Usage: installers/install.sh [options]

Sets up kitty-coreml under a prefix: a Python virtual environment with kitty-coreml from this clone,
the commands in PREFIX/bin, then \`kitty-coreml install\`: on a Mac (macOS 13.1+, Apple Silicon) Apple's
StableDiffusionSample at a pinned commit, the warm Core ML worker and the default model; on Linux the
portable diffusers engine and the smoke model. Run it again at any time: finished steps are skipped.

Options:
  --prefix DIR      where everything goes (default: ~/.kitty-coreml); sets KITTY_COREML_HOME=DIR
  --python PATH     the Python (3.11 or newer) for the virtual environment (default: the newest found)
  --model NAME      model to install, repeatable: sd21-palettized (default on a Mac), sd15-palettized,
                    sdxl-base, sdxl-mbp (macOS 14+), smoke (default elsewhere)
  --link-dir DIR    where the commands are linked on PATH (default: ~/.local/bin or another writable
                    PATH folder); \`none\` for no links
  --verify          check the installation, change nothing; exit non-zero naming what is wrong
  --dry-run         print the plan (repos, revisions, files, sizes, commands) and change nothing
  --json            print kitty-coreml install's report as one JSON object
  -h, --help        show this help

Environment: KITTY_COREML_ML_SD_REPO (clone source), HF_ENDPOINT (a Hugging Face mirror), and pip's own
PIP_* variables (index, find-links) are honoured.
USAGE
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

VERIFY=0
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON="$2"; shift 2 ;;
    --python=*) PYTHON="${1#*=}"; shift ;;
    --model) [ $# -ge 2 ] || die "--model needs a name"; PASS+=(--model "$2"); shift 2 ;;
    --model=*) PASS+=(--model "${1#*=}"); shift ;;
    --link-dir) [ $# -ge 2 ] || die "--link-dir needs a folder"; export KITTY_COREML_LINK_DIR="$2"; shift 2 ;;
    --link-dir=*) export KITTY_COREML_LINK_DIR="${1#*=}"; shift ;;
    --verify) VERIFY=1; PASS+=(--verify); shift ;;
    --dry-run) DRY_RUN=1; PASS+=(--dry-run); shift ;;
    --json) PASS+=(--json); shift ;;
    *) die "unknown option '$1' (see installers/install.sh --help)" ;;
  esac
done

mkdir -p "$PREFIX" 2>/dev/null || die "cannot create the prefix $PREFIX; choose another with --prefix DIR"
PREFIX="$(cd "$PREFIX" && pwd)"
VENV="$PREFIX/venv"

# --- the platform -------------------------------------------------------------------------------
OS="$(uname -s)"
case "$OS" in
  Darwin)
    ARCH="$(uname -m)"
    if [ "$ARCH" != "arm64" ] && [ "$(sysctl -in sysctl.proc_translated 2>/dev/null || echo 0)" != "1" ]; then
      die "Core ML image generation needs Apple Silicon (M1 or newer); this Mac is $ARCH"
    fi
    MACOS="$(sw_vers -productVersion)"
    major="${MACOS%%.*}"; rest="${MACOS#*.}"; minor="${rest%%.*}"
    [ "$rest" = "$MACOS" ] && minor=0
    if [ "$major" -lt 13 ] || { [ "$major" -eq 13 ] && [ "$minor" -lt 1 ]; }; then
      die "macOS $MACOS is too old: Core ML Stable Diffusion needs macOS 13.1+ (SDXL needs 14); update macOS"
    fi
    if [ "$major" -lt 14 ]; then
      say "macOS $MACOS: SD 1.5/2.1 models only (SDXL needs macOS 14)"
    fi
    if [ "$VERIFY" = 0 ] && [ "$DRY_RUN" = 0 ]; then
      xcode-select -p >/dev/null 2>&1 || die "the Xcode command line tools are missing; run: xcode-select --install"
      command -v swift >/dev/null 2>&1 || die "swift is not on PATH; install Xcode 14.3+ or run: xcode-select --install"
      swift --version >/dev/null 2>&1 || die "swift does not run (accept the Xcode licence: sudo xcodebuild -license)"
    fi
    ;;
  Linux) ;;
  *) die "unsupported system $OS: kitty-coreml runs on macOS (Core ML) and Linux (portable engine)" ;;
esac
command -v git >/dev/null 2>&1 || die "git is not on PATH; install git (macOS: xcode-select --install)"

# --- Python >= 3.11 -----------------------------------------------------------------------------
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; }
if [ -n "$PYTHON" ]; then
  py_ok "$PYTHON" || die "$PYTHON is not a Python 3.11 or newer; pass another with --python PATH"
else
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && py_ok "$(command -v "$candidate")"; then
      PYTHON="$(command -v "$candidate")"; break
    fi
  done
  [ -n "$PYTHON" ] || die "Python 3.11 or newer is needed (macOS: brew install python@3.12); or pass --python PATH"
fi

# --- the virtual environment and the package ----------------------------------------------------
if [ "$DRY_RUN" = 1 ] || [ "$VERIFY" = 1 ]; then
  [ -x "$VENV/bin/kitty-coreml" ] || {
    [ "$DRY_RUN" = 1 ] && say "would create $VENV with $PYTHON and install kitty-coreml from $SOURCE"
    [ "$VERIFY" = 1 ] && die "kitty-coreml is not installed in $VENV; run installers/install.sh --prefix $PREFIX"
    exit 0
  }
else
  if ! { [ -x "$VENV/bin/python" ] && py_ok "$VENV/bin/python"; }; then
    say "creating the virtual environment $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "could not create a virtual environment with $PYTHON (Debian/Ubuntu: apt install python3-venv)"
  fi
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
  # A fingerprint of what would be installed: unchanged sources and extras are not reinstalled.
  STAMP="$VENV/.kitty-coreml-installed"
  # `serve` and `worker` are commands the README names: the service extra goes in everywhere.
  EXTRA="[service]"
  [ "$OS" = Linux ] && EXTRA="[diffusers,service]"
  FINGERPRINT="$("$VENV/bin/python" - "$SOURCE" "$EXTRA" <<'PY'
import hashlib, sys
from pathlib import Path
root, extra = Path(sys.argv[1]), sys.argv[2]
digest = hashlib.sha256(extra.encode())
for path in sorted([root / "pyproject.toml", *(root / "kitty_coreml").rglob("*")]):
    if path.is_file() and "__pycache__" not in path.parts:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
print(digest.hexdigest())
PY
)"
  if [ -x "$VENV/bin/kitty-coreml" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$FINGERPRINT" ]; then
    say "kitty-coreml in $VENV is up to date"
  else
    if [ "$OS" = Linux ] && ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("torch").split("+")[0] != "2.13.0")' 2>/dev/null; then
      say "installing torch (CPU build) into $VENV"
      "${PIP[@]}" install --quiet "torch==2.13.0" \
        || die "pip could not install torch==2.13.0 (the CPU wheel); check pip's index or find-links (pip config list)"
    fi
    say "installing kitty-coreml$EXTRA from $SOURCE into $VENV"
    "${PIP[@]}" install --quiet "$SOURCE$EXTRA" \
      || die "pip could not install kitty-coreml from $SOURCE; see pip's message above"
    echo "$FINGERPRINT" > "$STAMP"
  fi
fi

# --- the provisioning steps (they also write the launchers in PREFIX/bin) -----------------------
export KITTY_COREML_HOME="$PREFIX"
export KITTY_COREML_SOURCE_DIR="$SOURCE"
exec "$VENV/bin/kitty-coreml" install ${PASS[@]+"${PASS[@]}"}
