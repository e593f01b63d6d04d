#!/usr/bin/env bash
# The main job end to end on a fresh machine, no download needed: set up the
# environment, generate the synthetic EM demo dataset, train fold 0 for a short
# run and evaluate it, segment the test volume, and say where everything is.
#
#   bash scripts/demo.sh [output_folder] [extra unet2d.py flags...]
#
# Defaults: ./results/demo; a UNet of a quarter the recipe's width (--base_filters 16, 1/16 of its FLOPs)
# trained for 120 steps at batch 2 in --dtype auto (bf16 where the CPU computes it natively, fp32 elsewhere),
# so that it finishes in a few minutes on any 2-core CPU with the evaluation Dice the recipe's full-width
# model reaches in 40 steps (about 0.88). Later flags win: --base_filters 64 --max_steps 40 trains the
# recipe's own model as the demo did before.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(realpath -m "${1:-./results/demo}")
shift || true
data="$out/demo_data"

python=$("$root/scripts/setup_env.sh" current | tail -n 1)
cd "$root"

if [ ! -f "$data/test-volume.tif" ]; then
  "$python" download_dataset.py --synthetic --data_dir "$data"
fi
common=(--data_dir "$data" --model_dir "$out/model" --batch_size 2 --dtype auto --base_filters 16)
"$python" unet2d.py "${common[@]}" --exec_mode train_and_evaluate --fold 0 --max_steps 120 --log_every 20 \
  --evaluate_every 40 --log_dir "$out/logs/train" --tensorboard_logging "$@"
"$python" unet2d.py "${common[@]}" --exec_mode predict --log_dir "$out/logs/predict" "$@"
"$python" -m runtime.plot_curves "$out/logs/train/log.json" -o "$out/learning-curves.png"

cat <<DONE

Demo finished. Outputs:
  data (synthetic EM)   $data
  checkpoint            $out/model/model_checkpoint
  predicted masks       $out/model/predictions/test-masks.tif
  pictures              $out/model/predictions/overlays/ (test), $out/logs/train/overlays/ (validation)
  learning curves       $out/learning-curves.png
  logs                  $out/logs/train/log.json, $out/logs/predict/log.json
  TensorBoard           $(dirname "$python")/tensorboard --logdir $out/logs/train
The evaluation Dice is the eval_dice_score in the last training log lines above, beside
the ISBI 2012 challenge scores as the organisers compute them (eval_v_rand_thinned and
eval_v_info_thinned, with their best thresholds) and those of the mask as is (eval_v_rand,
eval_v_info). In the pictures, red marks predicted membranes, green true membranes the
model missed, yellow membranes both agree on.
DONE
