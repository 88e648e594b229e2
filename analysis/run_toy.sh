#!/usr/bin/env bash
# The CPU-scale reproduction behind paper_figures/: the toy experiments, one process at a time.
#   bash analysis/run_toy.sh [OUT_ROOT]        (default /work/runs_toy; ~1 h on 2 busy cores)
#   python analysis/make_figures.py --runs OUT_ROOT --collect paper_figures/toy_runs
#
# What differs from running every conf/experiment/toy grid in full (to fit ~1 h of a shared
# 2-core CPU), all as command-line overrides:
#   * each distinct configuration runs once: SFPO K=3, α=0.8, slow on, EC on, decay zero and
#     GRPO run in paper_main; entropy_control runs only EC off, slow_correction only slow off,
#     alpha_decay only linear (their other grid points are those paper_main runs; the figures
#     take them from there — analysis.plotting.runs_for / dedupe_runs);
#   * seeds: 5 for paper_main, entropy control, slow correction and decay (seeds 3, 4 of the
#     last three were added in a second pass: the *_s34 dirs); 3 for K x alpha and memory;
#   * K x alpha: K in {3, 7} x alpha in {0.3, 0.6, 1.0} (plus K=3, α=0.8 = paper_main);
#   * memory_profile runs one process per run (CPU peak RSS is per process, so a multirun's
#     later jobs would inherit the earlier jobs' peak);
#   * val.every=5 (instead of 10) so validation curves and Fig. 4 have 5 points per run;
#   * skywork (Table 2): its toy twin is the paper_main grid on the same toy task (there is no
#     Skywork data at toy scale), 3 seeds.
set -euo pipefail
OUT=${1:-/work/runs_toy}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
COMMON=(wandb.mode=disabled checkpoint.every=0 checkpoint.save_best=false val.every=5)
SEEDS=0,1,2
run() {  # run NAME ARGS...: one Hydra multirun into OUT/NAME (skipped if it exists)
  local name=$1; shift
  if [[ -d "$OUT/$name" ]]; then echo "skip $name (exists)"; return; fi
  echo "[$(date +%T)] start $name"
  "$PY" train.py -m "$@" "${COMMON[@]}" hydra.sweep.dir="$OUT/$name" > "$OUT/$name.log" 2>&1 \
    || echo "[$(date +%T)] FAILED $name (see $OUT/$name.log)"
  find "$OUT/$name" -name '*.ckpt' -delete  # run data only, no weights
  echo "[$(date +%T)] done $name"
}
mkdir -p "$OUT"
run paper_main experiment=toy/paper_main seed=0,1,2,3,4
run skywork experiment=toy/skywork seed=$SEEDS
run entropy_control experiment=toy/entropy_control sfpo.entropy_control.enabled=false seed=$SEEDS
run slow_correction experiment=toy/slow_correction algorithm=sfpo sfpo.slow_correction=false seed=$SEEDS
run alpha_decay experiment=toy/alpha_decay sfpo.decay=linear seed=$SEEDS
run entropy_control_s34 experiment=toy/entropy_control sfpo.entropy_control.enabled=false seed=3,4
run slow_correction_s34 experiment=toy/slow_correction algorithm=sfpo sfpo.slow_correction=false seed=3,4
run alpha_decay_s34 experiment=toy/alpha_decay sfpo.decay=linear seed=3,4
for algo in grpo sfpo; do
  for seed in 0 1 2; do
    dir="$OUT/memory_profile/${algo}_s${seed}"
    [[ -d "$dir" ]] && continue
    echo "[$(date +%T)] start memory_profile $algo s=$seed"
    "$PY" train.py experiment=toy/memory_profile algorithm=$algo seed=$seed wandb.mode=disabled \
      hydra.run.dir="$dir" >> "$OUT/memory_profile.log" 2>&1 || echo "FAILED memory_profile $algo $seed"
    find "$dir" -name '*.ckpt' -delete
  done
done
# one multirun per (K, alpha), most informative first, so a cut-short reproduction still has
# whole (K, alpha) cells with every seed
for ka in 3:0.3 7:0.3 3:1.0 7:1.0 3:0.6 7:0.6; do
  run "ablation_k_alpha_K${ka%%:*}_a${ka##*:}" experiment=toy/ablation_k_alpha \
    sfpo.K=${ka%%:*} sfpo.alpha=${ka##*:} seed=$SEEDS
done
echo "[$(date +%T)] all done"
