#!/usr/bin/env bash
# The whole test suite, set-up included, on both supported stacks:
#   1. the current stack (TensorFlow 2.16+ / Keras 3): ruff, then every test;
#   2. the TF 2.15 / Keras 2 stack with Horovod (the last Gaudi stack): every test
#      again but those marked one_stack (their code path is the same on both stacks),
#      the Horovod and multi-worker tests now required to run.
# Environments are built once and cached (scripts/setup_env.sh); the first TF 2.15
# build compiles Horovod (3 to 10 minutes on 2 cores).
#
#   bash scripts/run_tests.sh                # both stacks, every test
#   bash scripts/run_tests.sh -m "not slow"  # the quick tier (no subprocess training runs, few workers)
#   UNET2D_STACKS=current bash scripts/run_tests.sh -k fold   # one stack, extra pytest arguments
#   UNET2D_TEST_WORKERS=1 bash scripts/run_tests.sh           # no pytest-xdist: every test in one process
#
# The quick tier runs in one process per stack (no xdist) unless UNET2D_TEST_WORKERS says otherwise: its tests
# run TensorFlow in-process on both cores already, and each xdist worker would import TensorFlow again.
#
# The first line names the machine's CPU kind and what --dtype auto runs there, so a
# log shows which kind of machine produced it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stacks=${UNET2D_STACKS:-current tf2.15}
quick=false
for argument in "$@"; do [ "$argument" = "not slow" ] && quick=true; done
workers=${UNET2D_TEST_WORKERS:-$($quick && echo 1 || echo 2)}  # pytest-xdist processes of the parallel phase (1: none)
# With xdist: two phases, the independent tests on both cores, a file per worker (module fixtures are built once),
# then the tests marked serial (several processes whose timing they depend on) alone. Without it one process
# runs every test in turn, the serial ones alone by construction.
phases=$([ "$workers" -gt 1 ] && echo "parallel serial" || echo "all")
status=0
first=true
# The zoo's own tools (bioimageio.core), in their own environment, check the packages that export writes.
UNET2D_ZOO_PYTHON=$(scripts/setup_env.sh zoo | tail -n 1)
export UNET2D_ZOO_PYTHON
# The TF 2.15 stack's Python, for the tests of models that cross stacks (trained on one, read on the other).
if [[ " $stacks " == *" tf2.15 "* ]]; then
  UNET2D_TF215_PYTHON=$(scripts/setup_env.sh tf2.15 | tail -n 1)
  export UNET2D_TF215_PYTHON
fi
for stack in $stacks; do
  python=$(scripts/setup_env.sh "$stack" | tail -n 1)
  if $first; then
    echo "=== machine: $("$python" -m runtime.cli.machine | tail -n 1)"
    first=false
  fi
  echo "=== $stack stack: $("$python" -c 'import sys, tensorflow as tf; print(f"Python {sys.version.split()[0]}, TensorFlow {tf.__version__}")' 2>/dev/null)"
  if [ "$stack" = current ]; then
    "$python" -m ruff check .
  fi
  require=$([ "$stack" = tf2.15 ] && echo 1 || echo 0)
  # Tests marked one_stack (bash scripts, benchmark bookkeeping) take the same path on every stack: once is enough.
  covered=$([ "$stack" = tf2.15 ] && [[ " $stacks " == *" current "* ]] && echo 1 || echo 0)
  started=$SECONDS
  # --durations: each phase ends with its 15 slowest tests, so the next person sees where the time goes.
  for phase in $phases; do
    spread=()
    [ "$phase" = parallel ] && [ "$workers" -gt 1 ] && spread=(-n "$workers" --dist loadfile)
    code=0
    UNET2D_TEST_PHASE=$phase UNET2D_REQUIRE_HOROVOD=$require UNET2D_ONE_STACK_DONE=$covered \
      "$python" -m pytest -q -p no:cacheprovider --durations=15 "${spread[@]}" "$@" || code=$?
    [ "$code" -eq 5 ] && code=0  # a phase that -k/-m left empty
    [ "$code" -ne 0 ] && status=$code
    echo "=== $stack stack, $phase phase: exit $code"
  done
  echo "=== $stack stack took $((SECONDS - started)) s"
done
exit $status
