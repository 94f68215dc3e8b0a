#!/usr/bin/env bash
# One short accelerator window, in one go: the train-step table (fp32 and bf16,
# batch 128/512/1024, 1 and 10 steps per call), host data rates, then as much of
# the paper's 1,200-epoch MNIST protocol as TRAIN_SECONDS allow (checkpointed, so
# `python experiments/train.py --config mnist_paper ...` with the same flags resumes it).
#
#   bash benchmarks/gpu_window.sh                 # on the GPU host
#   SMOKE=1 bash benchmarks/gpu_window.sh         # the same steps, tiny, on a CPU
#
# Output: $OUT (default runs/gpu_window): bench.jsonl, data.txt, the run's workdir.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu_window}
mkdir -p "$out"
bench=(--sizes 28 --routing 3 --precisions fp32,bf16 --batch_sizes 128,512,1024
       --steps_per_call 1,10 --steps 5 --warmup 2 --peak_tflops "${PEAK_TFLOPS:-989}")
train=(--config mnist_paper --precision bf16 --steps_per_call 10 --eval_every 4690
       --checkpoint_every 5000 --log_every 50 --workdir "$out/mnist_paper")
data=(--batch_size 512 --seconds 3 --workers 4,8)
if [[ -n "${SMOKE:-}" ]]; then
  bench=(--sizes 28 --routing 3 --precisions fp32 --batch_sizes 8 --steps_per_call 1,2
         --steps 1 --warmup 1 --peak_tflops 1)
  train=(--config mnist_paper --batch_size 8 --steps 4 --steps_per_call 2 --eval_every 4
         --checkpoint_every 2 --log_every 2 --test_subset 16 --eval_batch_size 16
         --workdir "$out/mnist_paper")
  data=(--batch_size 64 --seconds 0.5 --workers 1)
fi
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || lscpu | grep "Model name"; } | tee "$out/machine.txt"
python benchmarks/bench_train_step.py "${bench[@]}" --json | tee "$out/bench.jsonl"
python benchmarks/bench_data.py "${data[@]}" | tee "$out/data.txt"
# timeout sends SIGTERM: the loop saves a checkpoint and stops cleanly.
timeout --signal=TERM "${TRAIN_SECONDS:-420}" python experiments/train.py "${train[@]}" || true
tail -n 3 "$out/mnist_paper/metrics.jsonl" || true
