#!/usr/bin/env bash
# GPU benchmark for one short window on a CUDA machine (run from the project root there; it uses that machine's
# python3, or $PYTHON). Sections, each under its own `timeout` cap (the caps add up to 8 minutes; expected on one
# H100/H200-class GPU: about 5): the environment; the matmul peaks (fp32, tf32, bf16, fp16);
# bench/step.py --device cuda over the GPU configs in float32 (cuDNN's TF32), bf16, fp16 (AMDIM C10 only) and bf16
# with the batched augmentation in the step (--views device); the original AMDIM code (bench/original_step.py,
# needs its copy in bench/original/) at the two AMDIM configs in float32 and bf16; bench/loader.py --quick on the
# machine's cores (when the file exists); bench/augment.py with its batched path on the GPU.
#
# Each section's log goes to ${OUT:-/tmp}/gpu-bench/<section>.log; summary.txt there has every section's status
# (ok, exit status, timed out, absent), its seconds and its table. DRY_RUN=1 runs every section on the CPU with
# tiny configs (the bench scripts' --dry-run, caps times DRY_CAP_SCALE, default 3) to prove the script;
# tests/test_gpu_bench.py runs it. Measured on a 2-core host shared with other jobs (load ~6): 567 s in all (the
# float32 step section 186 s, views 158 s, the original 50 + 31 s, augment 43 s); about a third of that idle.
# On the GPU (estimate, none run yet): each bench/step.py process ~10 s to start and measure the peaks, each
# config ~5-10 s (autotuning, 40 steps, one counted step): about 70 s for float32, 60 for bf16, 40 for the views,
# 30 + 30 for the original, 30 for augment: ~5 minutes.
#
#     bash tools/gpu-bench.sh                 # PYTHON=... another python; DRY_RUN=1 on the CPU;
#                                             # SECTIONS="peaks step-fp32" runs only those sections
#
# Steps: 10 warm-up + 3 blocks of 10 timed steps per config (bench/step.py's CUDA defaults).
set -u
py=${PYTHON:-python3}
dry=${DRY_RUN:-0}
dir=${OUT:-/tmp}/gpu-bench
mkdir -p "$dir"
summary=$dir/summary.txt
: > "$summary"
export PYTHONUNBUFFERED=1
started=$(date +%s)

# section NAME CAP CMD...: run CMD with a CAP-second timeout (times $cap_scale), its output in $dir/NAME.log;
# one status line and the log's last lines (its table) into the summary.
section() {
  local name=$1 cap=$2; shift 2
  local log=$dir/$name.log t0 rc status
  if [ -n "${SECTIONS:-}" ] && [[ " $SECTIONS " != *" $name "* ]]; then
    echo "== $name: skipped (not in SECTIONS)" | tee -a "$summary"; return 0
  fi
  cap=$(( cap * cap_scale ))
  t0=$(date +%s)
  echo "\$ $*" > "$log"
  timeout -k 5 "$cap" "$@" >>"$log" 2>&1; rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMED OUT (cap ${cap}s)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  { echo "== $name: $status, $(( $(date +%s) - t0 ))s"
    grep -v -iE "warn|^\s*$|^Using a" "$log" | tail -n 24 | sed 's/^/   /'; } | tee -a "$summary"
}
absent() { echo "== $1: absent ($2)" | tee -a "$summary"; }

views_configs=(amdim-c10 moco-r50-128px cmc-r50-128px swav-r50-2x128-6x64)
if [ "$dry" = 1 ]; then
  # The CPU does in seconds what the GPU does in milliseconds, on a host others may share: longer caps; bf16 runs
  # one AMDIM and one multi-crop config (the float32 section runs every config, the views section every kind).
  cap_scale=${DRY_CAP_SCALE:-3}
  step=(bench/step.py --dry-run); original=(bench/original_step.py --dry-run)
  augment=(bench/augment.py --device cpu --images 32 --batch 16 --runs 1 --sizes 32 --kinds amdim cmc)
  bf16_configs=(--configs amdim-c10 swav-r50-2x128-6x64)
else
  cap_scale=1
  step=(bench/step.py --device cuda); original=(bench/original_step.py --device cuda)
  augment=(bench/augment.py --device cuda --images 1024 --runs 3 --sizes 32 96)
  bf16_configs=()
fi

section environment 10 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader 2>&1 | head -2; nproc; $py -c 'import torch, torchvision; print(\"torch\", \
torch.__version__, \"torchvision\", torchvision.__version__, \"cuda\", torch.version.cuda, \"available\", \
torch.cuda.is_available())'"
section peaks 25 "$py" "${step[@]}" --peaks_only
section step-fp32 110 "$py" "${step[@]}"
section step-bf16 85 "$py" "${step[@]}" --amp bf16 "${bf16_configs[@]}"
section step-fp16 25 "$py" "${step[@]}" --amp fp16 --configs amdim-c10
section step-bf16-views-device 60 "$py" "${step[@]}" --amp bf16 --views device --configs "${views_configs[@]}"
if [ -f bench/original/model.py ]; then
  section original-fp32 40 "$py" "${original[@]}"
  section original-bf16 40 "$py" "${original[@]}" --amp bf16
else
  absent original-fp32 "no copy of the original in bench/original/"
  absent original-bf16 "no copy of the original in bench/original/"
fi
if [ -f bench/loader.py ]; then section loader 30 "$py" bench/loader.py --quick
else absent loader "bench/loader.py is not in this checkout"
fi
if "$py" bench/augment.py --help 2>/dev/null | grep -q -- "--device"; then section augment 55 "$py" "${augment[@]}"
else absent augment "bench/augment.py has no --device option"
fi
echo "== total: $(( $(date +%s) - started ))s; logs in $dir" | tee -a "$summary"
