# Helpers shared by eval/table1.sh and eval/table1_cpu.sh (sourced, not run).

task_configs() {  # $1 method, $2 scale (paper|cpu), $3 task: the method's config, then the task's own file if any
    local own="configs/$1/$3.yaml"
    if [[ $2 == cpu ]]; then own="configs/$1/$3-cpu.yaml"; fi
    echo --config "configs/$1/$2.yaml"
    if [[ -e "$own" ]]; then echo --config "$own"; fi
}

run() {
    echo "+ $*"
    if [[ -z "${DRY_RUN:-}" ]]; then "$@"; fi
}

# Newest last.ckpt under a run root. The Lightning modules keep checkpoints in <root>/checkpoints/, but a config
# with another ModelCheckpoint dirpath or logger layout would put them elsewhere; searching keeps this robust.
last_ckpt() {
    if [[ -n "${DRY_RUN:-}" ]]; then echo "$1/checkpoints/last.ckpt"; return; fi
    local found
    found=$(find "$1" -name last.ckpt -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)
    if [[ -z "$found" ]]; then echo "no last.ckpt under $1 (did training finish?)" >&2; exit 1; fi
    echo "$found"
}

eval_callback() {  # $1: evaluate every this many steps, $2: simulator backend (EPISODES, EVAL_ENVS: caller)
    echo --trainer.callbacks+=mepoly_il.eval.callback.EvalCallback \
        --trainer.callbacks.every_n_steps "$1" --trainer.callbacks.episodes "$EPISODES" \
        --trainer.callbacks.num_envs "$EVAL_ENVS" --trainer.callbacks.sim_backend "$2"
}
