#!/usr/bin/env bash
# GPU check for a machine with CUDA (run from the project root there; it uses that machine's python3, which has
# torch, torchvision, tensorboard, tqdm, scikit-learn and pytest). It runs what CI can never run: the test suite
# with a GPU visible; training and scoring on CUDA in float32, --amp auto, --amp_dtype float16 (GradScaler) and
# --amp_dtype bfloat16 (refused on GPUs without native bfloat16, sm_75); a resume on CUDA; a run spawned over
# every visible GPU, resumed with another CUDA_VISIBLE_DEVICES (fewer GPUs, or the CPU alone where there is one
# GPU); the training step and batched augmentation benchmarks on the GPU. Results go to stdout and, when $OUT
# is set, to $OUT/gpu-check.log; the last line counts the checks that failed (the exit status is 1 if any did).
#
#     bash tools/gpu-check.sh                  # SKIP_TESTS=1 leaves out the test suite, PYTHON=... another python
set -u
log=${OUT:-/tmp}/gpu-check.log; : > "$log"
d=$(mktemp -d)
failed=0
say() { echo "$*" | tee -a "$log"; }
# run CMD...: run it, its output to the log (and $d/last.txt for the checks after it); one summary line.
run() {
  say "\$ $*"
  "$@" >"$d/last.txt" 2>&1; local rc=$?
  cat "$d/last.txt" >>"$log"
  say "  -> exit $rc; $(tail -1 "$d/last.txt" | cut -c1-220)"
  return $rc
}
# check NAME STATUS: count a failed check (STATUS non-zero) and say which.
check() { if [ "$2" -ne 0 ]; then failed=$((failed + 1)); say "  FAILED: $1"; fi; }
# printed PATTERN: whether the last run printed PATTERN (grep -E).
printed() { grep -Eq -- "$1" "$d/last.txt"; }
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
say "$($py -c 'import torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available(),
      "gpus", torch.cuda.device_count(), "capability", torch.cuda.get_device_capability() if torch.cuda.is_available() else None,
      "native bf16", torch.cuda.is_bf16_supported(including_emulation=False))' 2>&1)"
n_gpus=$($py -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
native_bf16=$($py -c 'import torch; print(int(torch.cuda.is_bf16_supported(including_emulation=False)))' 2>/dev/null || echo 0)
if [ "$n_gpus" -lt 1 ]; then say "no CUDA GPU visible to torch: nothing to check"; exit 1; fi

model="--dataset DIGITS --ndf 16 --n_rkhs 128 --n_depth 1 --warmup_updates 50 --log_every 5"
one_gpu="$model --batch_size 100 --device cuda"

# The suite takes minutes: SKIP_TESTS=1 leaves it out where a command's time is short.
if [ "${SKIP_TESTS:-0}" = 1 ]; then say "test suite skipped (SKIP_TESTS=1)"
else run $py -m pytest -q -x tests; check "test suite" $?
fi

# Precision: float32, auto (bf16 where native, else fp16 + GradScaler), fp16 + GradScaler asked for, bf16 asked for.
CUDA_VISIBLE_DEVICES=0 run $py train.py $one_gpu --epochs 3 --output_dir $d --run_name fp32; check "float32" $?
CUDA_VISIBLE_DEVICES=0 run $py train.py $one_gpu --epochs 3 --amp --output_dir $d --run_name amp; check "amp auto" $?
want=$([ "$native_bf16" = 1 ] && echo "amp bfloat16" || echo "amp float16 with a GradScaler")
printed "$want"; check "--amp auto picks '$want'" $?
CUDA_VISIBLE_DEVICES=0 run $py train.py $one_gpu --epochs 3 --amp --amp_dtype float16 --output_dir $d \
  --run_name fp16; check "amp float16" $?
printed "amp float16 with a GradScaler"; check "float16 trains with a GradScaler" $?
$py - "$d/fp16/amdim_cpt.pth" <<'PY' 2>&1 | tee -a "$log"
import math, sys, torch
ckpt = torch.load(sys.argv[1], weights_only=True, map_location="cpu")
scale = ckpt["scaler"].get("scale")
print(f"float16 checkpoint: amp_dtype {ckpt['run_info']['config']['amp_dtype']}, GradScaler scale {scale}, "
      f"growth tracker {ckpt['scaler'].get('_growth_tracker')}; rng entries: {[k for k in ckpt if 'rng' in k]}")
sys.exit(0 if scale and math.isfinite(scale) and ckpt["run_info"]["config"]["amp_dtype"] == "float16" else 1)
PY
check "float16 checkpoint holds the GradScaler state" "${PIPESTATUS[0]}"
CUDA_VISIBLE_DEVICES=0 run $py train.py $one_gpu --epochs 1 --amp --amp_dtype bfloat16 --output_dir $d \
  --run_name bf16
rc=$?
if [ "$native_bf16" = 1 ]; then check "amp bfloat16" $rc
else [ $rc -eq 2 ] && printed "has no native bfloat16"; check "bfloat16 refused in one line (exit 2) on this GPU" $?
fi
run $py test.py $d/amp/amdim_cpt.pth --dataset DIGITS --device cuda --json; check "test.py on CUDA" $?

# Every method on CUDA with fp16 + GradScaler and with bf16 (CMC's loss went NaN at update 3 with a fused SGD
# step under the GradScaler; its evaluation's Lab conversion failed under bf16 autocast).
for m in moco cmc swav; do
  for dt in float16 bfloat16; do
    [ "$dt" = bfloat16 ] && [ "$native_bf16" != 1 ] && continue
    CUDA_VISIBLE_DEVICES=0 run $py train.py --dataset DIGITS --method $m --arch resnet18 --batch_size 100 \
      --device cuda --epochs 2 --amp --amp_dtype $dt --output_dir $d --run_name $m-$dt
    check "$m trains on CUDA with --amp_dtype $dt" $?
  done
done

# Steady-state updates wait for nothing (docs/training.md): under torch's sync debug mode "error" any host-device
# sync raises; every method, fp32 and fp16, 4 updates after 3 warm ones, then one window read (which syncs).
for m in amdim moco cmc swav; do
  for amp in "" "--amp --amp_dtype float16"; do
    CUDA_VISIBLE_DEVICES=0 run $py - $m $amp <<'PY'
import sys, tempfile, torch
sys.path.insert(0, ".")
sys.path.insert(0, "tests")
import distributed, train
from helpers import BASE, TINY_FLAGS
method, extra = sys.argv[1], sys.argv[2:]
args = train.parse_args([*BASE, *TINY_FLAGS[method], *extra, "--device", "cuda", "--output_dir", tempfile.mkdtemp(),
                         "--compile", "off"])
run, _ = train.setup(distributed.Dist(device=torch.device("cuda")), args)
batches = iter(train.make_loaders(run))
for _ in range(3):
    train.update(run, next(batches), 0)
queued = [next(batches) for _ in range(4)]
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("error")
window = train.Pending()
window.rows = [train.update(run, batch, 0) for batch in queued]
torch.cuda.set_sync_debug_mode(0)
rows, _ = window.read(run.dist, False)
print(f"{method} {' '.join(extra) or 'fp32'}: 4 updates without a sync; losses", [round(v["loss"], 4) for _, v, _ in rows])
PY
    check "$m ${amp:-fp32}: no host-device sync in steady-state updates" $?
  done
done

# Compiled views on CUDA (augment.compile_views: inductor + Triton): every recipe, in memory and on the crop path,
# compiles without falling back, draws what eager draws (same seed, within rounding) and, once compiled, syncs never.
CUDA_VISIBLE_DEVICES=0 run $py - <<'PY'
import sys, torch
sys.path.insert(0, ".")
import augment
crops = augment.MultiCrop((2, 2), (32, 16), (0.3, 0.05), (1.0, 0.3))
images = torch.randint(0, 256, (64, 3, 40, 36), dtype=torch.uint8, device="cuda")
for kind in augment.VIEW_KINDS:
    options = {"crops": crops} if kind == "swav" else {}
    for path in ("memory", "crops"):
        views = (augment.make_views(kind, "cifar", batched=True, **options) if path == "memory"
                 else augment.make_crop_views(kind, "cifar", **options).colour)
        if path == "memory":
            x = images
        else:
            sizes = [s for s, _ in crops.each()] if kind == "swav" else [32] * (1 if kind == "cmc" else 2)
            x = [images[:, :, :s, :s].contiguous() for s in sizes]
        torch.manual_seed(3)
        eager = views(x)
        failed = []
        augment.compile_views(views, failed.append)
        torch.manual_seed(3)
        compiled = views(x)
        assert not failed, failed
        worst = max((c - e).abs().max().item() for c, e in zip(compiled, eager))
        assert worst < 1e-3, (kind, path, worst)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        views(x)
        torch.cuda.set_sync_debug_mode(0)
        print(f"{kind} {path}: compiled views match eager (max diff {worst:.1e}), no sync")
PY
check "compiled views on CUDA: eager's values, no fallback, no sync" $?

# torch.compile on CUDA (inductor + Triton), fp16 + GradScaler: it must compile, not fall back to eager.
CUDA_VISIBLE_DEVICES=0 run $py train.py $one_gpu --epochs 2 --amp --amp_dtype float16 --compile on \
  --output_dir $d --run_name compiled; check "--compile on trains on CUDA" $?
printed "torch.compile on" && ! printed "torch.compile failed"; check "compiled without falling back to eager" $?

# Resume on CUDA: 2 epochs straight vs 1 + 1.
CUDA_VISIBLE_DEVICES=0 run $py train.py $one_gpu --epochs 2 --seed 5 --output_dir $d --run_name straight
check "2 epochs straight" $?
CUDA_VISIBLE_DEVICES=0 run $py train.py $one_gpu --epochs 1 --seed 5 --output_dir $d --run_name split
check "1 epoch" $?
CUDA_VISIBLE_DEVICES=0 run $py train.py $one_gpu --epochs 2 --seed 5 --output_dir $d --run_name split
check "1 more epoch, resumed" $?
$py - "$d" <<'PY' 2>&1 | tee -a "$log"
import sys, torch
d = sys.argv[1]
a = torch.load(f"{d}/straight/amdim_cpt.pth", weights_only=True, map_location="cpu")["model"]
b = torch.load(f"{d}/split/amdim_cpt.pth", weights_only=True, map_location="cpu")["model"]
worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"resume on CUDA: max abs weight difference straight vs split {worst:.3g} (cuDNN autotuning and atomics "
      f"are not bit-reproducible)")
PY

# Every visible GPU: train.py spawns one process per GPU (NCCL), fp16 + GradScaler, saving every 5 updates too
# (every rank's meters gathered); then the run resumes for a second epoch with another CUDA_VISIBLE_DEVICES: one
# GPU fewer, or the CPU alone where there is only one GPU.
batch=$(( 100 / n_gpus * n_gpus ))
[ "$batch" -lt $(( 2 * n_gpus )) ] && batch=$(( 2 * n_gpus ))
if [ "$n_gpus" -ge 2 ]; then
  run $py train.py $model --batch_size $batch --device auto --epochs 1 --amp --amp_dtype float16 \
    --checkpoint_every 5 --num_workers 2 --output_dir $d --run_name spawned
  check "spawned run on $n_gpus GPUs" $?
  printed "world size $n_gpus"; check "spawned run has world size $n_gpus" $?
  fewer=$(seq -s, 0 $(( n_gpus - 2 )))
  fewer_batch=$(( batch / (n_gpus - 1) * (n_gpus - 1) ))
  [ "$fewer_batch" -lt $(( 2 * (n_gpus - 1) )) ] && fewer_batch=$(( 2 * (n_gpus - 1) ))
  CUDA_VISIBLE_DEVICES=$fewer run $py train.py $model --batch_size $fewer_batch --device auto --epochs 2 --amp \
    --amp_dtype float16 --num_workers 2 --output_dir $d --run_name spawned
  check "resume on GPUs $fewer" $?
else
  say "one GPU visible: the multi-process run is single-process here (run this on a machine with several GPUs)"
  CUDA_VISIBLE_DEVICES=0 run $py train.py $model --batch_size $batch --device auto --epochs 1 --amp \
    --amp_dtype float16 --checkpoint_every 5 --output_dir $d --run_name spawned
  check "run on the GPU" $?
  CUDA_VISIBLE_DEVICES= run $py train.py $model --batch_size $batch --device auto --epochs 2 --amp \
    --amp_dtype float16 --output_dir $d --run_name spawned
  check "resume on the CPU (CUDA_VISIBLE_DEVICES empty)" $?
fi
printed "resuming from"; check "the resume continued the checkpoint" $?

if [ -f bench/step.py ]; then
  if $py bench/step.py --help 2>/dev/null | grep -q -- "--device"; then
    run $py bench/step.py --device cuda; check "bench/step.py" $?
  else
    say "bench/step.py has no --device flag: GPU step throughput not measured"
  fi
fi
# The batched augmentation on the GPU (its masked, sync-free passes) against the per-image path on one core.
run $py bench/augment.py --device cuda --images 2048 --runs 3 --sizes 32 96; check "bench/augment.py on the GPU" $?
say "$failed check(s) failed; log: $log"
[ "$failed" -eq 0 ]
