#!/usr/bin/env bash
# Table 1 of the paper at paper scale: MePoly (stage 1 -> stage 2) and Diffusion Policy on PushCube, PickCube,
# StackCube (and PushT once its demos exist), 3 training seeds each, success_once in ManiSkill (state obs).
#
# Metric (paper, ManiSkill IL baselines): during training the EMA policy is evaluated every EVAL_EVERY steps on
# EPISODES episodes (EvalCallback); per training seed the PEAK success_once over those evaluations; then mean and
# sample std over the 3 seeds (`mepoly-il eval summary`). Evaluation seeds are block 0 (1_000_000 + i) for every
# method, task and training seed, so all runs face the same initial states; demo seeds (0..~1000) never overlap.
#
# Needs a GPU for training at this scale (DP: 30k steps x batch 1024). Evaluation of the cube tasks runs on the CPU
# simulator, as their demos do (ManiSkill's DP baseline: physx_cpu, 10 envs); PushT on physx_cuda, as its demos.
#
# Usage:  bash eval/table1.sh            (everything)
#         DRY_RUN=1 bash eval/table1.sh  (print the commands only)
#         TASKS="PushCube-v1" SEEDS="0" bash eval/table1.sh
set -euo pipefail

# default: the paper's four Table 1 tasks (PushT-v1 demos come from this package's scripted expert, not the paper's
# RL expert)
TASKS=${TASKS:-"PushCube-v1 PickCube-v1 StackCube-v1 PushT-v1"}
SEEDS=${SEEDS:-"0 1 2"}
NUM_DEMOS=${NUM_DEMOS:-100}          # ManiSkill DP baseline: 100 demos per task
EPISODES=${EPISODES:-100}            # evaluation episodes per evaluation point (ManiSkill: 100)
EVAL_EVERY=${EVAL_EVERY:-5000}       # ManiSkill DP: eval_freq 5000 of 30000 iterations
EVAL_ENVS=${EVAL_ENVS:-10}           # CPU: processes; GPU (PushT): parallel scenes, use 100
RUNS=${RUNS:-runs}
OUT=${OUT:-eval/results/table1}
MEPOLY_IL=${MEPOLY_IL:-mepoly-il}

# shellcheck source=eval/table1_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/table1_common.sh"

# Eval simulator per task: the one the demos were recorded on.
sim_backend() { if [[ "$1" == "PushT-v1" ]]; then echo physx_cuda; else echo physx_cpu; fi; }

for task in $TASKS; do
    # 1. demonstrations: motion planning -> replay to state + pd_ee_delta_pos -> zarr (demo seeds 0..)
    if [[ "$task" == "PushT-v1" ]]; then
        [[ -e datasets/PushT-v1.zarr ]] || { echo "datasets/PushT-v1.zarr missing: the paper's PushT demos are ManiSkill's RL-expert"\
            "rollouts; convert them first (see datasets/README.md)" >&2; exit 1; }
    elif [[ ! -e "datasets/$task.zarr" ]]; then
        run "$MEPOLY_IL" data prepare --env-id "$task" --num-demos "$NUM_DEMOS" --out "datasets/$task.zarr"
    fi
    for seed in $SEEDS; do
        # 2. MePoly stage 1 (trajectory VAE); no evaluation: it cannot act.
        # shellcheck disable=SC2046
        run "$MEPOLY_IL" fit stage1 $(task_configs stage1 paper "$task") --data.path "datasets/$task.zarr" \
            --trainer.default_root_dir "$RUNS/stage1/$task/seed$seed" --seed_everything "$seed"
        # 3. MePoly stage 2 (polynomial latent prior) on that seed's stage-1 weights, evaluated during training.
        # shellcheck disable=SC2046
        run "$MEPOLY_IL" fit stage2 $(task_configs stage2 paper "$task") --data.path "datasets/$task.zarr" \
            --model.stage1_ckpt "$(last_ckpt "$RUNS/stage1/$task/seed$seed")" \
            --trainer.default_root_dir "$RUNS/mepoly/$task/seed$seed" --seed_everything "$seed" \
            $(eval_callback "$EVAL_EVERY" "$(sim_backend "$task")")
        # 4. Diffusion Policy baseline, same data, same evaluation.
        # shellcheck disable=SC2046
        run "$MEPOLY_IL" fit dp $(task_configs dp paper "$task") --data.path "datasets/$task.zarr" \
            --trainer.default_root_dir "$RUNS/dp/$task/seed$seed" --seed_everything "$seed" \
            $(eval_callback "$EVAL_EVERY" "$(sim_backend "$task")")
        # 5. Final checkpoints once more with per-episode records and 2 videos (not used for the table).
        for method in mepoly dp; do
            run "$MEPOLY_IL" eval run "$(last_ckpt "$RUNS/$method/$task/seed$seed")" --episodes "$EPISODES" \
                --num-envs "$EVAL_ENVS" --sim-backend "$(sim_backend "$task")" --video 2 \
                --out "$RUNS/$method/$task/seed$seed/final_eval"
        done
    done
done

# 6. Peak / last / top-3 success_once per seed from the training-time evaluations; mean +- std over seeds.
run "$MEPOLY_IL" eval summary "$RUNS/mepoly" "$RUNS/dp" --source training --out "$OUT" --overwrite
