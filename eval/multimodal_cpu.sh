#!/usr/bin/env bash
# ReachAround-v1 (bimodal demos: the pillar is passed on the left or on the right) at a CPU budget: does a method
# keep both modes, and does a unimodal regressor fail? Same pipeline and metric as eval/table1_cpu.sh (CPU configs,
# 100 demos, training-time evaluations of EPISODES episodes every EVAL_EVERY steps, peak success_once per seed),
# plus a final evaluation of every seed's last checkpoint on FINAL_EPISODES held-out episodes whose rollouts are
# labelled left/right/none from their own trajectories (mepoly_il/envs/maniskill_reacharound.py: passing_side).
#
# Methods (METHODS, each a run folder under $RUNS):
#   mepoly_new  MePoly, stage 1 with the latent options measured in eval/results/latent/ (fixed-scale stress,
#               posterior-std floor 0.05, Linear z embedding, summed reconstruction): the setting that decoded the
#               fewest chunks between the two modes there
#   mepoly_old  MePoly with the shipped stage-1 defaults (iso_latent: mean, batch-normalised stress)
#   dp          Diffusion Policy (configs/dp/cpu.yaml)
#   regressor   MePoly with fixed_latent: the decoder always gets z = 0, i.e. an observation-to-chunk MSE
#               regressor (same networks, losses and budgets otherwise)
# Task budgets: configs/{stage1,stage2,dp}/ReachAround-v1-cpu.yaml.
#
# A (method, seed) whose final evaluation exists is skipped, so re-running finishes the missing ones.
# Usage:  bash eval/multimodal_cpu.sh                  DRY_RUN=1 bash eval/multimodal_cpu.sh
#         METHODS="dp regressor" SEEDS="0" bash eval/multimodal_cpu.sh
set -euo pipefail

TASK=ReachAround-v1
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"mepoly_new mepoly_old dp regressor"}
NUM_DEMOS=${NUM_DEMOS:-100}
EPISODES=${EPISODES:-20}
EVAL_EVERY=${EVAL_EVERY:-150}         # MePoly stage 2 (300 steps): 2 points
DP_EVAL_EVERY=${DP_EVAL_EVERY:-500}   # DP (1500 steps): 3 points
EVAL_ENVS=${EVAL_ENVS:-2}
FINAL_EPISODES=${FINAL_EPISODES:-100}
RUNS=${RUNS:-runs_mm}
OUT=${OUT:-eval/results/multimodal}
MEPOLY_IL=${MEPOLY_IL:-mepoly-il}
PYTHON=${PYTHON:-python}
SUMMARY_ONLY=${SUMMARY_ONLY:-}  # non-empty: skip training and evaluation, only (re)write the summaries
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}

# shellcheck source=eval/table1_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/table1_common.sh"

stage1_args() {  # the stage-1 options of a MePoly variant
    case $1 in
        mepoly_new) echo --model.iso_norm dataset --model.policy.min_posterior_std 0.05 \
            --model.policy.latent_embed true --model.recon_reduction sum ;;
        mepoly_old) ;;
        regressor) echo --model.policy.fixed_latent true ;;
        *) echo "unknown MePoly variant $1" >&2; exit 2 ;;
    esac
}

if [[ -z "$SUMMARY_ONLY" ]]; then
    if [[ ! -e "datasets/$TASK.zarr" ]]; then
        run "$MEPOLY_IL" data prepare --env-id "$TASK" --num-demos "$NUM_DEMOS" --out "datasets/$TASK.zarr"
    fi
    for seed in $SEEDS; do
        for method in $METHODS; do
            root="$RUNS/$method/$TASK/seed$seed"
            if [[ -n "${DRY_RUN:-}" ]] || ! compgen -G "$root/final_eval/*/eval_info.json" >/dev/null; then
                if [[ $method == dp ]]; then
                    # shellcheck disable=SC2046
                    run "$MEPOLY_IL" fit dp $(task_configs dp cpu "$TASK") --data.path "datasets/$TASK.zarr" \
                        --trainer.default_root_dir "$root" --seed_everything "$seed" \
                        $(eval_callback "$DP_EVAL_EVERY" physx_cpu)
                else
                    # shellcheck disable=SC2046
                    run "$MEPOLY_IL" fit stage1 $(task_configs stage1 cpu "$TASK") --data.path "datasets/$TASK.zarr" \
                        --trainer.default_root_dir "$RUNS/stage1_$method/$TASK/seed$seed" --seed_everything "$seed" \
                        $(stage1_args "$method")
                    # shellcheck disable=SC2046
                    run "$MEPOLY_IL" fit stage2 $(task_configs stage2 cpu "$TASK") --data.path "datasets/$TASK.zarr" \
                        --model.stage1_ckpt "$(last_ckpt "$RUNS/stage1_$method/$TASK/seed$seed")" \
                        --trainer.default_root_dir "$root" --seed_everything "$seed" \
                        $(eval_callback "$EVAL_EVERY" physx_cpu)
                fi
                run "$MEPOLY_IL" eval run "$(last_ckpt "$root")" --episodes "$FINAL_EPISODES" \
                    --num-envs "$EVAL_ENVS" --out "$root/final_eval"
            fi
        done
    done
fi

# Peak success_once per seed from the training-time evaluations, one summary per method (all four are
# "mepoly" or "dp" checkpoints, so they are summarised separately), then the per-mode table of the final evaluations.
for method in $METHODS; do
    if [[ -n "${DRY_RUN:-}" || -d "$RUNS/$method" ]]; then
        run "$MEPOLY_IL" eval summary "$RUNS/$method" --source training --out "$OUT/$method" --overwrite
    fi
done
run "$PYTHON" -c "import sys; from mepoly_il.eval.aggregate import write_mode_table as w; w(sys.argv[1], \
sys.argv[3:], sys.argv[2])" "$RUNS" "$OUT/modes.md" $METHODS
