#!/usr/bin/env bash
# Evaluate one model in N shards as a Slurm array job, then merge.
#
#   sbatch --array=1-8 examples/scale/slurm-array.sh      # one task per shard
#   sbatch --dependency=afterok:<array job id> --wrap \
#     'gauntlet merge out/shard-*/results.json --out out/merged/results.json'
#
# Each task is an ordinary single-process `gauntlet eval` on its slice of the
# samples; the merged record equals the single run's (timings aside), so reports
# and `gauntlet check` work on it unchanged.
#SBATCH --job-name=gauntlet
#SBATCH --cpus-per-task=8
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --output=out/slurm-%A_%a.log
set -euo pipefail

SHARDS="${SLURM_ARRAY_TASK_COUNT:?run as an array job: sbatch --array=1-N}"
K="${SLURM_ARRAY_TASK_ID:?}"          # 1-based, matching --array=1-N

gauntlet eval \
  --model examples/models/mnist-cnn.safetensors \
  --data datasets/mnist-5k \
  --suite attacks/standard-linf.toml \
  --seed 0 \
  --threads "${SLURM_CPUS_PER_TASK}" \
  --shard "${K}/${SHARDS}" \
  --quiet \
  --out "out/shard-${K}"
