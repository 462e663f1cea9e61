#!/usr/bin/env bash
# Exact commands behind eval/rl/seed_methods/README.md (2-core CPU shared with other jobs, no GPU; every script is
# single-threaded). Each writes its JSON (or text) next to this file.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$PWD"
PY=.venv/bin/python
D=eval/rl/seed_methods

$PY $D/run_rpg.py $D/rpg_bandit.json                 # RPG toy bandit as published, seeds 0 1 2 (~64 s/seed idle)
$PY $D/mrp_stationary.py $D/mrp_stationary.json       # mixture paper's bimodal-bandit stationary points (SciPy)
$PY $D/s2ac_entropy.py $D/s2ac_entropy.json           # S2AC closed-form entropy vs known entropies
$PY $D/actor_cost.py > $D/actor_cost.txt              # ms per SAC actor step per estimator
