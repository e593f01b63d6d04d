#!/usr/bin/env bash
# Create (or reuse) the virtual environment of one software stack and print the
# path of its Python interpreter as the last line of output.
#
#   scripts/setup_env.sh current     TensorFlow 2.16+ / Keras 3 (CPU or GPU)
#
# Environments are cached under ${UNET2D_VENV_CACHE:-$HOME/.cache/unet2d/venvs},
# keyed by a hash of the requirement files and the interpreter version, so a
# second call on the same machine is instant and a changed requirement file
# builds a fresh environment beside the old one.
set -euo pipefail

usage() { echo "usage: $0 current" >&2; exit 2; }
[ $# -eq 1 ] || usage
stack=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

case "$stack" in
  current)
    python=${UNET2D_PYTHON:-python3}
    req_files=("$root/requirements.txt" "$root/requirements-test.txt")
    ;;
  *) usage ;;
esac

command -v "$python" >/dev/null || { echo "error: interpreter '$python' not found" >&2; exit 2; }
py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$( { echo "$stack $py_version"; cat "${req_files[@]}"; } | sha256sum | cut -c1-16)
cache=${UNET2D_VENV_CACHE:-$HOME/.cache/unet2d/venvs}
venv="$cache/$stack-py$py_version-$key"
mkdir -p "$cache"

# One builder at a time per environment; others wait and then reuse it.
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "building $stack environment in $venv" >&2
  rm -rf -- "$venv"                    # only our own half-built cache entry
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  for req in "${req_files[@]}"; do args+=(-r "$req"); done
  "$venv/bin/python" -m pip install --quiet "${args[@]}" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
