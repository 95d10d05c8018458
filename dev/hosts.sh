# Further ComfyUI hosts, for the tests that run on each host (tests/test_hosts.py). Sourced by
# dev/provision.sh, after the main venv exists. A host VERSION is defined by two files:
#   dev/hosts/comfyui-VERSION.env              the PyPI sdist that holds its tree, and extra packages
#   dev/hosts/comfyui-VERSION.constraints.txt  pins of what it needs beyond (or other than) the main venv
# and provisioned (once; stamps tell when to redo it) into $TCD_DEV/hosts/comfyui-VERSION/:
#   comfyui/  the tree, unpacked from the sdist (only the sdist is downloaded, nothing is built)
#   venv/     a venv whose site-packages reads the main venv's through a .pth file (torch and the rest
#             are shared, never copied or reinstalled) and holds only the pinned packages
# Run one by hand: $TCD_DEV/hosts/comfyui-VERSION/venv/bin/python $TCD_DEV/hosts/comfyui-VERSION/comfyui/main.py

MAIN_VENV=$TCD_DEV/venv  # the venv each host's venv reads, with torch pinned by dev/constraints.txt
MAIN_CONSTRAINTS=$TCD_ROOT/dev/constraints.txt

host_versions() {  # every host defined in dev/hosts/
  local spec
  for spec in "$TCD_ROOT"/dev/hosts/comfyui-*.env; do
    spec=${spec##*/comfyui-}
    echo "${spec%.env}"
  done
}

provision_host() {
  local version=$1 spec=$TCD_ROOT/dev/hosts/comfyui-$1 dir=$TCD_DEV/hosts/comfyui-$1
  local HOST_SDIST HOST_TREE HOST_EXTRA
  [ -f "$spec.env" ] || { log "no ComfyUI host $version: dev/hosts/comfyui-$version.env is missing"; return 1; }
  source "$spec.env"
  mkdir -p "$dir"
  if [ ! -f "$dir/comfyui/main.py" ]; then
    log "unpacking ComfyUI $version from the sdist of $HOST_SDIST into $dir/comfyui"
    local sdists=$TCD_DEV/sdists
    "$MAIN_VENV/bin/python" -m pip download -q --no-deps --no-binary=:all: --ignore-requires-python "$HOST_SDIST" -d "$sdists"
    rm -rf "$dir/comfyui.tmp"
    # The sdist's file is named after its top folder, the first part of HOST_TREE.
    "$MAIN_VENV/bin/python" "$TCD_ROOT/dev/unpack_comfyui.py" "$sdists/${HOST_TREE%%/*}.tar.gz" "$dir/comfyui.tmp" "$HOST_TREE"
    mv "$dir/comfyui.tmp" "$dir/comfyui"
  fi

  local venv=$dir/venv stamp=$dir/venv.stamp want site shared
  want=$(inputs_hash "$spec.env" "$spec.constraints.txt" "$MAIN_CONSTRAINTS" "$dir/comfyui/requirements.txt" "$TCD_DEV/venv.stamp")
  fresh "$stamp" "$want" && [ -x "$venv/bin/python" ] && return
  log "venv $venv for ComfyUI $version: the main venv's packages plus dev/hosts/comfyui-$version.constraints.txt"
  rm -rf "$venv"
  "$BASE_PYTHON" -m venv --without-pip "$venv"  # pip too comes from the main venv
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  shared=$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  echo "$shared" > "$site/_tcd_main_venv.pth"
  # torchaudio comes from HOST_EXTRA at the version the .env names, never from ComfyUI's unpinned line.
  grep -viE '^\s*torchaudio' "$dir/comfyui/requirements.txt" > "$dir/requirements.txt"
  # shellcheck disable=SC2086  # HOST_EXTRA is a list of requirements
  "$venv/bin/python" -m pip install -q -c "$MAIN_CONSTRAINTS" -c "$spec.constraints.txt" -r "$dir/requirements.txt" $HOST_EXTRA
  if [ -e "$site/torch" ]; then
    log "pip installed a torch of its own into $venv: the host must share the main venv's"
    return 1
  fi
  echo "$want" > "$stamp"
}

# TCD_HOSTS="0.30.0 ..." names the hosts to provision (default: all); TCD_HOSTS= provisions none, and the
# tests on the others then fail, saying how to provision them.
provision_hosts() {
  TCD_HOSTS=${TCD_HOSTS-$(host_versions | tr '\n' ' ')}
  local version
  for version in $TCD_HOSTS; do
    provision_host "$version"
  done
  export TCD_HOSTS
}
