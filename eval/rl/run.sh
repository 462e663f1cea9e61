#!/usr/bin/env bash
# Exact commands behind the tables and plots in eval/rl/ (2-core CPU shared with other jobs, no GPU; every run is
# single-threaded; at most 2 runs at a time). Runs land in runs/rl/ (git-ignored); the report writes eval/rl/.
# A sweep skips runs whose metrics.json already exists, so this script can be re-run to resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MEPOLY=.venv/bin/mepoly-il
SW_ENVS="smoothworld-two_walls smoothworld-four_walls smoothworld-tree_in_the_middle smoothworld-two_slits smoothworld-cshape"

# 1. Bandit, all four heads, both targets, 5 seeds (sigma = 0.1, the authors' code value; 100 iterations x 1024).
$MEPOLY rl sweep --envs bandit-lemniscate bandit-two-moons --heads gaussian gmm mepoly fpo \
    --seeds 0 1 2 3 4 --out runs/rl/bandit --jobs 2

# 2. Order / basis ablation on the bandit (MePoly only), seed 0 first. K=14 Legendre is the main run of step 1.
ablation() {
  for K in 2 6 10 14; do
    for B in legendre monomial; do
      [ "$K$B" = "14legendre" ] && continue
      $MEPOLY rl sweep --envs bandit-lemniscate bandit-two-moons --heads mepoly --seeds "$@" \
          --out runs/rl/ablation --variant "mepoly-K${K}-${B}" --jobs 2 -- --order "$K" --basis "$B"
    done
  done
}
ablation 0

# 3. Smooth World, the five benchmark layouts, all four heads, 3 seeds (seed-major, so a partial run covers all cells).
for S in 0 1 2; do
  $MEPOLY rl sweep --envs $SW_ENVS --heads gaussian gmm mepoly fpo --seeds "$S" --out runs/rl/smoothworld --jobs 2
done

# 4. Second ablation seed.
ablation 1

# 5. Tables and plots.
$MEPOLY rl report runs/rl/bandit runs/rl/ablation runs/rl/smoothworld --out eval/rl --overwrite

# 6. Smooth World with a 3.3x larger budget (100 iterations = 204,800 env steps per run), seed-major; its own
#    report (same variant names, so it must not be mixed with step 3's runs).
for S in 0 1 2; do
  $MEPOLY rl sweep --envs $SW_ENVS --heads gaussian gmm mepoly fpo --seeds "$S" --out runs/rl/smoothworld_long \
      --jobs 2 -- --iterations 100
done
$MEPOLY rl report runs/rl/smoothworld_long --out eval/rl/smoothworld_long --overwrite

# 7. Smooth World at the MePoly authors' env-step budget (1.0M / 4.1M / 8.2M steps; about 3.5 CPU-hours): its own
#    script and report (eval/rl/smoothworld_authors/).
bash eval/rl/smoothworld_authors.sh

# 8. The other seed methods (SAC with Gaussian / mixture-MRP / MePoly heads, S2AC, RPG) and the papers' small
#    studies: their own script, tables and JSON (eval/rl/seed_methods/).
bash eval/rl/seed_methods/run.sh
