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
#               fewest chunks between the two modes there, shipped in configs/stage1/*.yaml since 2026-12
#   mepoly_old  MePoly with the stage-1 options shipped before 2026-12 (iso_latent: mean, batch-normalised stress,
#               no std floor, raw z into the AdaLNs, mean reconstruction): its latent collapses
#   dp          Diffusion Policy (configs/dp/cpu.yaml)
#   regressor   mepoly_old with fixed_latent: the decoder always gets z = 0, i.e. an observation-to-chunk MSE
#               regressor (same networks, losses and budgets otherwise)
# Task budgets: configs/{stage1,stage2,dp}/ReachAround-v1-cpu.yaml; STAGE1_STEPS / STAGE2_STEPS / DP_STEPS override
# the step counts alone (empty: the configs'), e.g. STAGE1_STEPS=1500 STAGE2_STEPS=1000 EVAL_EVERY=500 for MePoly at
# the step counts of configs/{stage1,stage2}/cpu.yaml (batch and everything else as in the task files).
#
# Every training and final-evaluation command appends one row to $RUNS/wall_times.tsv: method, seed, phase
# (stage1 / stage2 / dp / final_eval), wall seconds (training-time evaluations included), CPU seconds (user + system
# of the command's process and the children it waits for: not the evaluation's simulator workers, which live under a
# forkserver, so it undercounts evaluations), and the 1-minute load average before and after: on a shared machine
# wall times compare only at similar loads.
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
STAGE1_STEPS=${STAGE1_STEPS:-}        # empty: the configs' max_steps
STAGE2_STEPS=${STAGE2_STEPS:-}
DP_STEPS=${DP_STEPS:-}
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

# The shipped stage-1 configs used the old options until 2026-12 and use the new ones since; both variants name
# every option, so the runs do not depend on which is shipped.
OLD_STAGE1="--model.iso_norm batch --model.policy.min_posterior_std 0.0 --model.policy.latent_embed false \
    --model.recon_reduction mean"
stage1_args() {  # the stage-1 options of a MePoly variant
    case $1 in
        mepoly_new) echo --model.iso_norm dataset --model.policy.min_posterior_std 0.05 \
            --model.policy.latent_embed true --model.recon_reduction sum ;;
        mepoly_old) echo "$OLD_STAGE1" ;;
        regressor) echo "$OLD_STAGE1" --model.policy.fixed_latent true ;;
        *) echo "unknown MePoly variant $1" >&2; exit 2 ;;
    esac
}

load1() { cut -d" " -f1 /proc/loadavg; }

children_cpu() {  # CPU_NOW = CPU seconds (user + system) of this shell's finished children (not in a $(...))
    local f
    f=$(mktemp)
    times >"$f"
    CPU_NOW=$(tail -1 "$f" | awk '{ split($1, u, "m"); split($2, s, "m"); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }')
    rm -f "$f"
}

timed() {  # $1 method, $2 seed, $3 phase, then the command: run it, append its times to $RUNS/wall_times.tsv
    local method=$1 seed=$2 phase=$3 t0 l0 dt c0
    shift 3
    children_cpu
    t0=$(date +%s.%N) l0=$(load1) c0=$CPU_NOW
    run "$@"
    children_cpu
    if [[ -z "${DRY_RUN:-}" ]]; then
        mkdir -p "$RUNS"
        if [[ ! -e "$RUNS/wall_times.tsv" ]]; then
            printf 'method\tseed\tphase\twall_s\tcpu_s\tload_before\tload_after\tfinished_utc\n' >"$RUNS/wall_times.tsv"
        fi
        dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
        printf '%s\t%s\t%s\t%.1f\t%.1f\t%s\t%s\t%s\n' "$method" "$seed" "$phase" "$dt" \
            "$(awk -v a="$c0" -v b="$CPU_NOW" 'BEGIN { print b - a }')" "$l0" "$(load1)" "$(date -u +%FT%TZ)" \
            >>"$RUNS/wall_times.tsv"
    fi
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
                    timed "$method" "$seed" dp "$MEPOLY_IL" fit dp $(task_configs dp cpu "$TASK") \
                        --data.path "datasets/$TASK.zarr" --trainer.default_root_dir "$root" --seed_everything "$seed" \
                        ${DP_STEPS:+--trainer.max_steps "$DP_STEPS"} $(eval_callback "$DP_EVAL_EVERY" physx_cpu)
                else
                    # shellcheck disable=SC2046
                    timed "$method" "$seed" stage1 "$MEPOLY_IL" fit stage1 $(task_configs stage1 cpu "$TASK") \
                        --data.path "datasets/$TASK.zarr" \
                        --trainer.default_root_dir "$RUNS/stage1_$method/$TASK/seed$seed" --seed_everything "$seed" \
                        ${STAGE1_STEPS:+--trainer.max_steps "$STAGE1_STEPS"} $(stage1_args "$method")
                    # shellcheck disable=SC2046
                    timed "$method" "$seed" stage2 "$MEPOLY_IL" fit stage2 $(task_configs stage2 cpu "$TASK") \
                        --data.path "datasets/$TASK.zarr" \
                        --model.stage1_ckpt "$(last_ckpt "$RUNS/stage1_$method/$TASK/seed$seed")" \
                        --trainer.default_root_dir "$root" --seed_everything "$seed" \
                        ${STAGE2_STEPS:+--trainer.max_steps "$STAGE2_STEPS"} $(eval_callback "$EVAL_EVERY" physx_cpu)
                fi
                timed "$method" "$seed" final_eval "$MEPOLY_IL" eval run "$(last_ckpt "$root")" \
                    --episodes "$FINAL_EPISODES" --num-envs "$EVAL_ENVS" --out "$root/final_eval"
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
