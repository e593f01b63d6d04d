#!/usr/bin/env bash
# Create (or reuse) the virtual environment of one software stack and print the
# path of its Python interpreter as the last line of output.
#
#   scripts/setup_env.sh current   TensorFlow 2.16+ / Keras 3 (CPU or GPU)
#   scripts/setup_env.sh tf2.15    Python 3.10, TensorFlow 2.15 / Keras 2.15 and Horovod
#                                  0.28.1 built with MPI and Gloo (the last Gaudi stack)
#   scripts/setup_env.sh zoo       the BioImage Model Zoo's bioimageio.core (its `bioimageio test`
#                                  and `predict`), ONNX Runtime and current TensorFlow, apart from
#                                  the project's own environments
#
# Environments are cached under ${UNET2D_VENV_CACHE:-$HOME/.cache/unet2d/venvs},
# keyed by a hash of the requirement files and the interpreter version, so a
# second call on the same machine is instant and a changed requirement file
# builds a fresh environment beside the old one. UNET2D_PYTHON picks the
# interpreter (default: python3 for current, python3.10 for tf2.15).
set -euo pipefail

usage() { echo "usage: $0 current|tf2.15|zoo" >&2; exit 2; }
[ $# -eq 1 ] || usage
stack=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

find_python310() {
  if command -v python3.10 >/dev/null && python3.10 -c '' 2>/dev/null; then echo python3.10; return; fi
  for candidate in "$HOME"/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  echo "error: the tf2.15 stack needs Python 3.10 (set UNET2D_PYTHON)" >&2
  exit 2
}

ensure_mpi() {
  # Horovod is built with MPI when OpenMPI is there; as root on Debian we install it.
  command -v mpicxx >/dev/null && command -v mpirun >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing OpenMPI (Debian packages openmpi-bin libopenmpi-dev)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >&2
  else
    echo "warning: no OpenMPI found; Horovod will be built with Gloo only (horovodrun works, mpirun does not)" >&2
  fi
}

post_install=none
case "$stack" in
  current)
    python=${UNET2D_PYTHON:-python3}
    req_files=("$root/requirements.txt" "$root/requirements-test.txt")
    ;;
  tf2.15)
    python=${UNET2D_PYTHON:-$(find_python310)}
    req_files=("$root/requirements-tf2.15.txt" "$root/requirements-test.txt")
    post_install=horovod
    ;;
  zoo)
    python=${UNET2D_PYTHON:-python3}
    req_files=("$root/requirements-zoo.txt")
    ;;
  *) usage ;;
esac

command -v "$python" >/dev/null || { echo "error: interpreter '$python' not found" >&2; exit 2; }
py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
hashed=("${req_files[@]}")
[ "$post_install" = horovod ] && hashed+=("$root/requirements-horovod.txt")
key=$( { echo "$stack $py_version"; cat "${hashed[@]}"; } | sha256sum | cut -c1-16)
cache=${UNET2D_VENV_CACHE:-$HOME/.cache/unet2d/venvs}
venv="$cache/$stack-py$py_version-$key"
mkdir -p "$cache"

# One builder at a time per environment; others wait and then reuse it.
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "building the $stack environment in $venv" >&2
  rm -rf -- "$venv"                    # only our own half-built cache entry
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  args=()
  for req in "${req_files[@]}"; do args+=(-r "$req"); done
  "$venv/bin/python" -m pip install --quiet "${args[@]}" >&2
  if [ "$post_install" = horovod ]; then
    ensure_mpi
    echo "building Horovod against TensorFlow (3 to 10 minutes on 2 cores)" >&2
    "$venv/bin/python" -m pip install --quiet wheel "setuptools<70" "cmake<4" >&2
    mpi_flag=$(command -v mpicxx >/dev/null && echo HOROVOD_WITH_MPI=1 || echo HOROVOD_WITHOUT_MPI=1)
    env HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      "$mpi_flag" PATH="$venv/bin:$PATH" \
      "$venv/bin/python" -m pip install --quiet --no-cache-dir --no-build-isolation \
      -r "$root/requirements-horovod.txt" >&2
    "$venv/bin/horovodrun" --check-build >&2
  fi
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
