#!/usr/bin/env bash
# Smooth World at the MePoly authors' env-step budget (their run scripts: 500 / 2000 / 4000 PPO iterations of
# 2048 steps = 1.0M / 4.1M / 8.2M steps for two_walls / four_walls / tree_in_the_middle), MePoly, Gaussian and
# mixture heads, seeds 0-2; every other setting is the Smooth World preset of `rl ppo`. Single-threaded runs, two
# at a time (about 3.5 CPU-hours in all on an idle 2-core VM). Layout-major, so a partial run covers whole layouts.
# A sweep skips runs whose metrics.json exists, so re-running resumes. Tables: eval/rl/smoothworld_authors/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MEPOLY=.venv/bin/mepoly-il
for spec in two_walls:500 four_walls:2000 tree_in_the_middle:4000; do
  $MEPOLY rl sweep --envs "smoothworld-${spec%%:*}" --heads mepoly gaussian gmm --seeds 0 1 2 \
      --out runs/rl/smoothworld_authors --jobs 2 -- --iterations "${spec##*:}"
done
$MEPOLY rl report runs/rl/smoothworld_authors --out eval/rl/smoothworld_authors --overwrite
