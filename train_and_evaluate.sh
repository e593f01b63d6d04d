#!/usr/bin/env bash
# 5-fold cross-validation: train and evaluate folds 0..4, then average the
# evaluation Dice and cross-entropy over the folds (read from the JSON logs).
#
#   bash train_and_evaluate.sh <data_dir> <results_dir> <batch_size> <auto|fp32|bf16> <workers> [unet2d.py flags...]
#
# auto runs bf16 where the hardware computes it natively and fp32 elsewhere
# (python -m runtime.cli.machine says which); the run names carry what it ran as.
# Fold k logs to <results_dir>/<precision>_<workers>hpu_fold<k>.log and keeps its
# checkpoint and log.json in <results_dir>/<precision>_<workers>hpu_fold<k>/.
# More than one worker runs, on the TF 2.15 stack (the interpreter's TensorFlow
# is older than 2.16), under mpirun with --use_horovod (MPIRUN_FLAGS replaces
# the default mpirun options); on current TensorFlow, through
# scripts/launch_workers.py with --distribution multi_worker (LAUNCH_FLAGS adds
# launcher options). Extra flags go to every fold, e.g. --max_steps 100. The
# interpreter is $PYTHON, or python3. With ENSEMBLE=1 the five fold models then
# segment the test volume together (unet2d.py --ensemble, their probabilities
# averaged) into <results_dir>/<precision>_<workers>hpu_ensemble/predictions/.
# FOLDS runs and averages only some folds, e.g. FOLDS="2 4" to re-run two that
# failed (default "0 1 2 3 4"); ENSEMBLE=1 then joins those folds' models.
set -euo pipefail

usage() {
  echo "usage: $0 <data_dir> <results_dir> <batch_size> <auto|fp32|bf16> <workers> [unet2d.py flags...]" >&2
  echo "error: $1" >&2
  exit 2
}
[ $# -ge 5 ] || usage "expected at least 5 arguments, got $#"
data_dir=$1 results_dir=$2 batch_size=$3 precision=$4 workers=$5
shift 5
[ -d "$data_dir" ] || usage "data_dir is not a folder: $data_dir"
[[ $batch_size =~ ^[1-9][0-9]*$ ]] || usage "batch_size must be a positive integer, got '$batch_size'"
[[ $precision == auto || $precision == fp32 || $precision == bf16 ]] \
  || usage "precision must be auto, fp32 or bf16, got '$precision'"
[[ $workers =~ ^[1-9][0-9]*$ ]] || usage "workers must be a positive integer, got '$workers'"
read -r -a folds <<< "${FOLDS:-0 1 2 3 4}"
[ ${#folds[@]} -gt 0 ] || usage "FOLDS is empty; give fold numbers 0-4, e.g. FOLDS=\"0 3\""
for fold in "${folds[@]}"; do
  [[ $fold =~ ^[0-4]$ ]] || usage "FOLDS must hold fold numbers 0-4 separated by spaces, got '${FOLDS}'"
done
[ "$(printf '%s\n' "${folds[@]}" | sort -u | wc -l)" -eq ${#folds[@]} ] || usage "FOLDS repeats a fold: '${FOLDS}'"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
read -r -a mpirun_flags <<< "${MPIRUN_FLAGS:---allow-run-as-root --bind-to none --oversubscribe}"
read -r -a launch_flags <<< "${LAUNCH_FLAGS:-}"
engine=none
if [ "$workers" -gt 1 ]; then
  # Horovod does not build against TensorFlow 2.16+: there, TensorFlow's own multi-worker engine.
  engine=$("$python" -c 'import sys, tensorflow as tf
major, minor = (int(v) for v in tf.__version__.split(".")[:2])
sys.stdout.write("horovod" if (major, minor) < (2, 16) else "multi_worker")' 2>/dev/null) \
    || usage "cannot import TensorFlow with $python"
fi
if [ "$precision" = auto ]; then
  precision=$(cd "$here" && "$python" -m runtime.cli.machine --dtype_only | tail -n 1) \
    || usage "cannot import TensorFlow with $python"
fi
env_name="${precision}_${workers}hpu"
mkdir -p "$results_dir"

for fold in "${folds[@]}"; do
  run_dir="$results_dir/${env_name}_fold$fold"
  log="$results_dir/${env_name}_fold$fold.log"
  command=("$python" "$here/unet2d.py" --exec_mode train_and_evaluate --data_dir "$data_dir"
           --model_dir "$run_dir" --log_dir "$run_dir" --batch_size "$batch_size" --dtype "$precision"
           --fold "$fold" --max_steps 6400 --augment "$@")
  if [ "$engine" = horovod ]; then
    command=(mpirun "${mpirun_flags[@]}" -np "$workers" "${command[@]}" --use_horovod)
  elif [ "$engine" = multi_worker ]; then
    command=("$python" "$here/scripts/launch_workers.py" -n "$workers" "${launch_flags[@]}" --
             "${command[@]:1}" --distribution multi_worker)
  fi
  echo "fold $fold: ${command[*]} > $log"
  if ! "${command[@]}" > "$log" 2>&1; then
    echo "fold $fold failed; its log: $log" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
done

PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$python" -m runtime.parse_results --model_dir "$results_dir" --env "$env_name" --folds "${folds[@]}"

if [ "${ENSEMBLE:-0}" = 1 ]; then
  fold_dirs=()
  for fold in "${folds[@]}"; do fold_dirs+=("$results_dir/${env_name}_fold$fold"); done
  ensemble_dir="$results_dir/${env_name}_ensemble"
  log="$results_dir/${env_name}_ensemble.log"
  command=("$python" "$here/unet2d.py" --exec_mode predict --data_dir "$data_dir" --model_dir "$ensemble_dir"
           --log_dir "$ensemble_dir" --batch_size "$batch_size" --dtype "$precision" "$@" --ensemble "${fold_dirs[@]}")
  echo "ensemble of folds ${folds[*]} on the test volume: ${command[*]} > $log"
  if ! "${command[@]}" > "$log" 2>&1; then
    echo "the ensemble prediction failed; its log: $log" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  echo "ensemble masks: $ensemble_dir/predictions/"
fi
