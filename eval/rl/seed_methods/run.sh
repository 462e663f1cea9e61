#!/usr/bin/env bash
# Exact commands behind eval/rl/seed_methods/ (2-core CPU shared with other jobs, no GPU; every process is
# single-threaded, $JOBS at a time, default 2). `run.sh` runs every section; `run.sh multigoal mrp ...` only those
# named (sections: toys multigoal multigoal-mepoly multigoal-amortised mrp mrp-narrow rpg2d mountaincar
# mountaincar-minus1 report). Training runs land in runs/rl/seed_methods/
# (git-ignored); a run whose metrics.json (or JSON) exists is skipped, so the script resumes. Jobs start in the
# order listed (most informative first), so a partial sweep is the head of each list. Tables, plots and JSON are
# written next to this file.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$PWD"
PY=${PY:-.venv/bin/python}
MEPOLY=${MEPOLY:-.venv/bin/mepoly-il}
D=eval/rl/seed_methods
R=${RUNS:-runs/rl/seed_methods}
JOBS=${JOBS:-2}
SECTIONS=${*:-"toys multigoal multigoal-mepoly multigoal-amortised mrp mrp-narrow rpg2d mountaincar mountaincar-minus1 report"}

rl() {  # rl OUT ARGS...: the command line of one `mepoly-il rl` run into OUT, unless it is finished
  local out=$1; shift
  echo "[ -f $out/metrics.json ] || $MEPOLY rl $* --out $out --quiet --overwrite > /dev/null"
}

jobs_of() { case $1 in
multigoal)  # S2AC paper §4.2: 3 fixed temperatures x 3 seeds, S2AC(phi) and SAC-Gaussian at the same alpha and budget.
  # S2AC with both SVGD drives: grad Q (the authors' code) and grad Q / alpha (the paper's text); at alpha = 1 the
  # two are the same run, so s2ac-a1 serves both.
  MG="--env multigoal --seed"
  for SEED in 0 1 2; do for A in 0.2 5; do
    rl $R/multigoal/s2ac-gradq-a$A/seed$SEED s2ac $MG $SEED --alpha $A --total-steps 20000 --svgd-steps 3 \
      --svgd-drive grad_q
  done; done
  for SEED in 2 0 1; do for A in 1 5 0.2; do
    rl $R/multigoal/s2ac-a$A/seed$SEED s2ac $MG $SEED --alpha $A --total-steps 20000 --svgd-steps 3
    rl $R/multigoal/sac-gaussian-a$A/seed$SEED sac $MG $SEED --head gaussian --autotune false --alpha $A \
      --total-steps 20000
  done; done ;;
multigoal-mepoly)  # SAC with the MePoly head (quadrature actor gradient) at the multigoal section's budget
  for A in 1 5 0.2; do for SEED in 0 1 2; do
    rl $R/multigoal/sac-mepoly-a$A/seed$SEED sac --env multigoal --seed $SEED --head mepoly --autotune false \
      --alpha $A --total-steps 20000
  done; done ;;
multigoal-amortised)  # S2AC(phi, theta): the amortised actor at the alphas and budget of the multigoal section
  for SEED in 0 1 2; do for A in 1 5 0.2; do
    rl $R/multigoal/s2ac-amortised-a$A/seed$SEED s2ac --env multigoal --seed $SEED --alpha $A --total-steps 20000 \
      --svgd-steps 3 --amortised true
  done; done ;;
mrp)  # mixture paper §5.1: synthetic multimodal bandits, true reward as critic; one job per pair of bandits
  for B in "0 1" "2 3" "4 5"; do
    echo "[ -f $R/mrp_bandits/b${B// /_}.json ] || $PY $D/mrp_bandits.py $R/mrp_bandits/b${B// /_}.json $B"
  done ;;
mrp-narrow)  # the same study on bandits of six narrow, separate peaks (stds 0.01-0.05), seeds 0-4, 3 step sizes
  for LR in 0.003 0.0003 0.03; do for B in "0 1" "2 3" "4 5"; do
    OUT=$R/mrp_bandits_narrow/b${B// /_}_lr$LR.json
    echo "[ -f $OUT ] || $PY $D/mrp_bandits.py $OUT --narrow --lr $LR $B"
  done; done ;;
mountaincar)  # mixture paper §5.3: MountainCar with the 0/1 goal reward, SAC at fixed alpha, 64x64 nets, 5 seeds
  for SEED in 0 1 2 3 4; do
    rl $R/mountaincar/sac-gaussian/seed$SEED sac --env mountaincar-sparse --head gaussian --seed $SEED
    rl $R/mountaincar/sac-gmm-mrp/seed$SEED sac --env mountaincar-sparse --head gmm --seed $SEED
    rl $R/mountaincar/sac-gmm-lr/seed$SEED sac --env mountaincar-sparse --head gmm --estimator lr --seed $SEED
  done ;;
mountaincar-minus1)  # the same with the paper's unshaped reward (-1 per step) at the lab's 100 000 env steps
  for SEED in 0 1 2 3 4; do
    rl $R/mountaincar_minus1/sac-gaussian/seed$SEED sac --env mountaincar-minus1 --head gaussian --seed $SEED
    rl $R/mountaincar_minus1/sac-gmm-mrp/seed$SEED sac --env mountaincar-minus1 --head gmm --seed $SEED
  done
  for SEED in 0 1 2 3 4; do  # the likelihood-ratio baseline last
    rl $R/mountaincar_minus1/sac-gmm-lr/seed$SEED sac --env mountaincar-minus1 --head gmm --estimator lr --seed $SEED
  done ;;
rpg2d)  # RPG's latent-conditioned policy as a PPO head (our variant) at the PPO heads' budget of eval/rl/
  for SEED in 0 1 2; do for E in bandit-lemniscate bandit-two-moons smoothworld-tree_in_the_middle; do
    rl $R/rpg2d/$E/seed$SEED rpg --env $E --seed $SEED
  done; done ;;
esac; }

TRAIN=""
for S in $SECTIONS; do case $S in
toys)  # seconds to minutes each
  $PY $D/run_rpg.py $D/rpg_bandit.json                 # RPG toy bandit as published, seeds 0 1 2 (~64 s/seed idle)
  $PY $D/mrp_stationary.py $D/mrp_stationary.json       # mixture paper's bimodal-bandit stationary points (SciPy)
  $PY $D/s2ac_entropy.py $D/s2ac_entropy.json           # S2AC closed-form entropy vs known entropies
  $PY $D/actor_cost.py > $D/actor_cost.txt              # ms per SAC actor step per estimator
  ;;
multigoal|multigoal-mepoly|multigoal-amortised|mrp|mrp-narrow|mountaincar|mountaincar-minus1|rpg2d) TRAIN="$TRAIN $S" ;;
esac; done
# every training run of the sections named, in their order, $JOBS at a time
mkdir -p $R/mrp_bandits $R/mrp_bandits_narrow
for S in $TRAIN; do jobs_of $S; done | xargs -P "$JOBS" -I{} bash -c '{}'
case " $SECTIONS " in *" report "*)
  ROOTS=$(for X in multigoal mountaincar mountaincar_minus1 rpg2d; do [ -d $R/$X ] && echo $R/$X; done)
  $MEPOLY rl report $ROOTS --out $D/report --overwrite
  $PY $D/mrp_report.py $R/mrp_bandits $D/mrp_bandits.md
  [ -z "$(ls $R/mrp_bandits_narrow)" ] || $PY $D/mrp_report.py $R/mrp_bandits_narrow $D/mrp_bandits_narrow.md
  ;;
esac
