"""Training-step throughput of every method and backbone: model + its costs + classifiers, forward, backward,
optimizer step and the method's hooks (MoCo's momentum update and queue push; SwAV's prototype normalisation,
Sinkhorn with a queue and queue push), on the CPU or one CUDA GPU, float32 or under autocast.

On the CPU (the default) each (config, variant) runs in its own process so peak RSS is its own, and the table has
median img/s of the timed steps after warm-up, min-max, peak RSS, achieved GFLOP/s (torch's flop counter, per
image pair) next to this machine's measured float32 matrix-multiply rate.

    .venv/bin/python bench/step.py                  # every CPU config: the previous default against today's
    .venv/bin/python bench/step.py --configs small --variants eager channels_last default --steps 7

With --device cuda (GPU_CONFIGS by default, one process, peak memory reset per config) the table has, per config:
img/s (median over timed blocks of --block_steps steps, the GPU synchronised only at block ends), GFLOP per image
(an image with all its views), achieved TFLOP/s, MFU (model FLOP utilisation: achieved over this GPU's measured
matrix-multiply peak of the precision the run computes in: TF32 for float32, as cuDNN convolves float32 in TF32
by default, bf16 or fp16 under --amp), peak memory (torch.cuda.max_memory_allocated), and warm-up seconds (the
first --warmup steps: cuDNN autotuning, compilation). The peaks (fp32, tf32, bf16, fp16 matmuls) are printed first.

    python3 bench/step.py --device cuda [--amp bf16] [--views device] [--configs amdim-c10 ...]
    python3 bench/step.py --device cuda --configs cmc-alexnet-128px cmc-r50v2-128px     # CMC's own encoders
    python3 bench/step.py --dry-run        # every GPU config, tiny, on the CPU in one process: proves the script

--views device times the batched augmentation on the device inside the step (uint8 images in host memory ->
augment.make_views(..., batched=True) -> the step), as training on in-memory data does; --views host (the
default) feeds ready float views already in the step's device memory.

Variants (memory format, torch.compile, fused optimizer step): eager (contiguous, no, no: the original's path),
channels_last_unfused (the default before compile-by-default), channels_last (no compile), compile (contiguous),
default (channels_last, compiled, fused: what train.py runs once a run is long enough to compile).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import host     # bench/host.py: the CPU model and matmul rate every table prints

SWAV_STATE = ["--queue_length", "3840", "--epoch_queue_starts", "0", "--freeze_prototypes_niters", "0"]
DC_STATE = ["--freeze_prototypes_niters", "0"]
# name: (method, image size, batch, model flags). The three AMDIM configs are the 32 px ones quoted in issue 5
# (0.353, 1.59 and 7.1 GFLOP per image pair); "default" is the original's model defaults.
CONFIGS = {
    "small": ("amdim", 32, 64, ["--ndf", "32", "--n_rkhs", "256", "--n_depth", "1"]),
    "medium": ("amdim", 32, 100, ["--ndf", "64", "--n_rkhs", "512", "--n_depth", "2"]),
    "default": ("amdim", 32, 200, ["--ndf", "128", "--n_rkhs", "1024", "--n_depth", "3"]),
    "moco-amdim-small": ("moco", 32, 64, ["--arch", "amdim", "--ndf", "32", "--n_rkhs", "256", "--n_depth", "1"]),
    "moco-resnet18": ("moco", 32, 64, ["--arch", "resnet18"]),
    "moco-resnet50": ("moco", 128, 32, ["--arch", "resnet50", "--mlp"]),
    "cmc-amdim-small": ("cmc", 32, 64, ["--arch", "amdim", "--ndf", "32", "--n_rkhs", "256", "--n_depth", "1"]),
    "cmc-resnet18": ("cmc", 32, 64, ["--arch", "resnet18"]),
    "cmc-resnet50": ("cmc", 128, 32, ["--arch", "resnet50"]),
    # CMC's own encoders (--arch alexnet_cmc, its default; resnet18v1: half-width stages per view).
    "cmc-alexnet": ("cmc", 32, 64, ["--arch", "alexnet_cmc"]),
    "cmc-resnet18v1": ("cmc", 32, 64, ["--arch", "resnet18v1"]),
    # SwAV with its multi-crop: the AMDIM encoder takes only 32 px, so its small crops are 32 px crops of small
    # areas; the ResNets take the defaults (2 x 32 + 4 x 16 px; 2 x 128 + 6 x 64 px). A full queue (3840, the
    # seed's batch-256 one) and unfrozen prototypes, so every part of the step runs.
    "swav-amdim-small": ("swav", 32, 64, ["--arch", "amdim", "--ndf", "32", "--n_rkhs", "256", "--n_depth", "1",
                                          "--nmb_crops", "2", "4", "--size_crops", "32", "32", "--min_scale_crops",
                                          "0.14", "0.05", "--max_scale_crops", "1", "0.14", *SWAV_STATE]),
    "swav-resnet18": ("swav", 32, 64, ["--arch", "resnet18", *SWAV_STATE]),
    "swav-resnet50": ("swav", 128, 32, ["--arch", "resnet50", *SWAV_STATE]),
    # DeepCluster-v2 as SwAV (its crops and head), prototypes trained (not the seed's default) so every part of the
    # step runs, its memory full and clustered before the first step (a CIFAR-sized split: 50,000 rows).
    "deepclusterv2-amdim-small": ("deepclusterv2", 32, 64, ["--arch", "amdim", "--ndf", "32", "--n_rkhs", "256",
                                                            "--n_depth", "1", "--nmb_crops", "2", "4", "--size_crops",
                                                            "32", "32", "--min_scale_crops", "0.14", "0.05",
                                                            "--max_scale_crops", "1", "0.14", *DC_STATE]),
    "deepclusterv2-resnet18": ("deepclusterv2", 32, 64, ["--arch", "resnet18", *DC_STATE]),
    # One GPU's share of the seeds' runs. AMDIM: the C10 model at batch 256, and the paper's ImageNet model (its
    # README: batch 480 on 4 GPUs, 120 each); the ResNet-50s at 128 px (IN128); SwAV's multi-crop as the seed's
    # (2 x 224 + 6 x 96: the ResNets pool adaptively) and as our IN128 default (2 x 128 + 6 x 64), 64 a GPU.
    "amdim-c10": ("amdim", 32, 256, ["--ndf", "128", "--n_rkhs", "1024", "--n_depth", "3"]),
    "amdim-in128": ("amdim", 128, 120, ["--ndf", "192", "--n_rkhs", "1536", "--n_depth", "8"]),
    "moco-r50-128px": ("moco", 128, 128, ["--arch", "resnet50", "--mlp"]),
    "cmc-r50-128px": ("cmc", 128, 128, ["--arch", "resnet50"]),
    "cmc-alexnet-128px": ("cmc", 128, 128, ["--arch", "alexnet_cmc"]),
    "cmc-r50v2-128px": ("cmc", 128, 128, ["--arch", "resnet50v2"]),
    "swav-r50-2x224-6x96": ("swav", 128, 64, ["--arch", "resnet50", "--nmb_crops", "2", "6", "--size_crops", "224",
                                              "96", *SWAV_STATE]),
    "swav-r50-2x128-6x64": ("swav", 128, 64, ["--arch", "resnet50", "--nmb_crops", "2", "6", "--size_crops", "128",
                                              "64", *SWAV_STATE]),
    "deepclusterv2-r50-2x128-6x64": ("deepclusterv2", 128, 64, ["--arch", "resnet50", "--nmb_crops", "2", "6",
                                                                "--size_crops", "128", "64", *DC_STATE]),
}
GPU_CONFIGS = ["amdim-c10", "amdim-in128", "moco-r50-128px", "cmc-r50-128px", "swav-r50-2x224-6x96",
               "swav-r50-2x128-6x64", "deepclusterv2-r50-2x128-6x64"]
# GPU configs outside the default list (tools/gpu-bench.sh's window is full): --configs names them.
GPU_EXTRA = ["cmc-alexnet-128px", "cmc-r50v2-128px"]
MULTI_CROP = ("swav", "deepclusterv2")
CPU_CONFIGS = [name for name in CONFIGS if name not in GPU_CONFIGS + GPU_EXTRA]
# --dry-run: every config tiny (flag -> value; SwAV's crops a quarter of their size), at batch TINY_BATCH, so
# that the CPU runs all of them in seconds.
TINY_FLAGS = {"--ndf": "8", "--n_rkhs": "64", "--n_depth": "1", "--arch": "resnet18", "--queue_length": "64"}
TINY_BATCH = 2
# variant: (memory format, torch.compile, fused optimizer step). "default" is what train.py runs for a run long
# enough to compile (compiling.AUTO_MIN_UPDATES); "channels_last_unfused" was the default before fused steps
# and compile-by-default; "eager" is the original code's path.
VARIANTS = {"eager": ("contiguous", False, False), "channels_last_unfused": ("channels_last", False, False),
            "channels_last": ("channels_last", False, True), "compile": ("contiguous", True, True),
            "default": ("channels_last", True, True)}
DATASET_OF_SIZE = {32: "C10", 64: "STL10", 128: "IN128"}
AMPS = {"none": None, "bf16": "bfloat16", "fp16": "float16"}            # --amp -> train.py's --amp_dtype
# The matmul peak each precision's MFU is taken against (float32 runs: cuDNN convolves in TF32 by default).
PEAK_OF_AMP = {"none": "tf32", "bf16": "bf16", "fp16": "fp16"}
PEAK_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def tiny(flags):
    """A config's model flags with every size flag of TINY_FLAGS at its tiny value (--dry-run)."""
    flags = list(flags)
    for i, flag in enumerate(flags[:-1]):
        if flag in TINY_FLAGS:
            flags[i + 1] = TINY_FLAGS[flag]
        if flag == "--size_crops":
            for j in range(i + 1, len(flags)):
                if flags[j].startswith("--"):
                    break
                flags[j] = str(max(16, int(flags[j]) // 4))
    return flags


def source_size(size, crop_sizes):
    """Side (px) of the uint8 images --views device crops from: 32 px data as C10's; larger recipes crop from
    images a quarter larger than their largest output, as an image folder's resized images."""
    return 32 if max(crop_sizes) == 32 else round(1.25 * max(crop_sizes))


def synchronize(device):
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU has nothing queued)."""
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, precision, n=8192, iters=20, repeats=5):
    """This device's matrix-multiply rate (TFLOP/s, median of `repeats` loops of `iters` n x n products) in one
    precision of PEAK_DTYPES: fp32 (full float32), tf32 (float32 inputs, TensorFloat-32 products where the device
    has them), bf16, fp16."""
    import torch
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        dtype = getattr(torch, PEAK_DTYPES[precision])
        g = torch.Generator(device=device).manual_seed(0)
        a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=g) for _ in range(2))
        out = a @ b
        times = []
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.mm(a, b, out=out)
            synchronize(device)
            times.append(time.perf_counter() - t0)
        return 2 * n ** 3 * iters / statistics.median(times) / 1e12
    finally:
        torch.set_float32_matmul_precision(before)


def matmul_peaks(device, dry_run=False):
    """{precision: TFLOP/s} for every PEAK_DTYPES precision (--dry-run: small products, a few loops)."""
    size = dict(n=256, iters=2, repeats=2) if dry_run else {}
    return {precision: matmul_peak(device, precision, **size) for precision in PEAK_DTYPES}


def time_blocks(step, device, blocks, block_steps):
    """(seconds of each of `blocks` blocks of `block_steps` calls of step(), the last call's result): the device
    synchronised only at the blocks' ends (no per-step host-device sync)."""
    times = []
    for _ in range(blocks):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(block_steps):
            last = step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times, last


def peak_memory_mb(device):
    """MiB: CUDA's peak allocated memory since the last reset, else this process's peak RSS."""
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(config_name, variant, device, amp="none", views="host", dry_run=False, spec=None):
    """One config's training step on `device`, as train.py builds and runs it; spec: a (method, size, batch,
    flags) tuple of CONFIGS' form to build instead of CONFIGS[config_name]. Returns a namespace: step() runs one
    update (forward, loss, backward, optimizer step, the method's hooks; GradScaler under fp16) and returns its
    loss tensor (no sync); run is the train.Run-like namespace train.loss_terms takes; batch_data what a step
    feeds (ready views, or uint8 images for --views device); count_batch ready views of the same images (what
    the flop counter runs on); batch, optimizer, scaler."""
    from types import SimpleNamespace

    import torch

    import augment
    import checkpoint
    import config
    import distributed
    import engine
    import mixed_precision as mp
    import phases
    import train
    method, size, batch, flags = spec or CONFIGS[config_name]
    if dry_run:
        flags, batch = tiny(flags), TINY_BATCH
    memory_format, compile_step, fused = VARIANTS[variant]
    amp_flags = ["--amp", "--amp_dtype", AMPS[amp]] if AMPS[amp] else []
    args = train.parse_args(["--dataset", DATASET_OF_SIZE[size], "--method", method, "--batch_size", str(batch),
                             "--memory_format", memory_format, "--device", device.type, *amp_flags, *flags])
    dist = distributed.Dist(device=device)
    torch.manual_seed(0)
    hp = config.from_flags(args, size, n_classes=10)
    if method == "moco":
        hp["moco_k"] = 4096           # a queue of a CIFAR-sized run's order of magnitude
    if method == "cmc":               # banks of a CIFAR-sized training split; nce_k stays the seed's 4096
        hp.update(n_data=1000 if dry_run else 50000, rgb_mean=[0.5, 0.5, 0.5], rgb_std=[0.25, 0.25, 0.25])
    if method == "deepclusterv2":     # one memory row per image of a CIFAR-sized split, no more clusters than rows
        hp["n_data"] = 1000 if dry_run else 50000
        hp["nmb_prototypes"] = [min(k, hp["n_data"]) for k in hp["nmb_prototypes"]]
    model = train.place_model(checkpoint.build_model(hp), args, dist)
    if method == "deepclusterv2":     # a full memory, clustered at the first (warm-up) step
        model.memory.copy_(torch.nn.functional.normalize(torch.randn_like(model.memory), dim=2))
        model.filled.fill_(True)
    phase = phases.SelfSupervised(model, args)
    step_model = train.wrap_step(phase, dist, compile_step)
    if method == "swav":              # a full queue from the first step (rows of unit length, as embeddings)
        model.queue = torch.nn.functional.normalize(torch.randn(len(hp["crops_for_assign"]), hp["queue_length"],
                                                                hp["feat_dim"], device=device), dim=2)
    optimizer = phase.optimizer(args)
    for group in optimizer.param_groups:
        group["fused"] = group.get("fused") and fused       # as train.py's optimizer, or unfused
    amp_dtype = mp.resolve(device, args.amp, args.amp_dtype)
    scaler = mp.grad_scaler(device, amp_dtype)
    view_spec = phases.SelfSupervised.views(hp)
    run = SimpleNamespace(args=args, dist=dist, model=model, phase=phase, step_model=step_model,
                          n_views=view_spec.count, amp=amp_dtype, splits=SimpleNamespace(batch_augment=None))
    g = torch.Generator().manual_seed(1)
    labels, index = torch.randint(0, 10, (batch,), generator=g), torch.arange(batch)
    if views == "device":
        run.splits.batch_augment = augment.make_views(view_spec.kind, augment.RECIPE_OF_SIZE[size], batched=True,
                                                      **view_spec.options)
        if compile_step:                                        # as train.py: the views compile with the step
            augment.compile_views(run.splits.batch_augment, print)
        crop_sizes = [s for s, _ in augment.MultiCrop.from_hyperparams(hp).each()] if method in MULTI_CROP else \
            [size]
        side = source_size(size, crop_sizes)
        images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=g)
        batch_data = (images.pin_memory() if device.type == "cuda" else images, labels, index)
        with torch.no_grad():
            ready = run.splits.batch_augment(images.to(device), n_views=view_spec.count)
    else:
        if method == "cmc":                                     # CMC's views: Lab's L and ab
            shapes = [(1, size), (2, size)]
        elif method in MULTI_CROP:                              # every crop at its own size
            shapes = [(3, s) for s, _ in augment.MultiCrop.from_hyperparams(hp).each()]
        else:
            shapes = [(3, size)] * 2
        ready = tuple(torch.randn(batch, c, s, s, generator=g) for c, s in shapes)
        batch_data = None
    layout = engine.layout(memory_format)
    count_batch = (tuple(v.to(device, memory_format=layout) for v in ready), labels, index)
    batch_data = batch_data or count_batch
    updates = iter(range(10 ** 9))

    def step():
        update = next(updates)
        model.start_update(0, update, dist, shared_seed=update)
        terms, _, out = train.loss_terms(run, batch_data, shared_seed=update)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        model.before_optimizer_step(update)
        scaler.step(optimizer)
        scaler.update()
        model.after_step(out, dist)
        return loss.detach()

    return SimpleNamespace(step=step, run=run, batch_data=batch_data, count_batch=count_batch, batch=batch,
                           optimizer=optimizer, scaler=scaler)


def flops_per_image(run, count_batch, batch):
    """Forward + backward FLOPs per image (an image with all its views) of the eager model on ready views, by
    torch's flop counter (no augmentation counted)."""
    from types import SimpleNamespace

    from torch.utils.flop_counter import FlopCounterMode

    import train
    eager = SimpleNamespace(**vars(run))
    eager.step_model, eager.splits = run.model, SimpleNamespace(batch_augment=None)   # the counter sees every op
    with FlopCounterMode(display=False) as counter:
        terms, _, _ = train.loss_terms(eager, count_batch, shared_seed=0)
        sum(terms.values()).backward()
    run.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def measure(config_name, variant, steps, warmup, device="cpu", amp="none", views="host", block_steps=1,
            dry_run=False):
    """Time one config's training step in this process: `warmup` steps (timed together: the warm-up time), then
    `steps` timed steps in blocks of `block_steps`; returns a dict for the table (img/s per block, its median
    and range; GFLOP per image; peak memory: CUDA's allocated peak, else this process's peak RSS)."""
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    built = build(config_name, variant, device, amp, views, dry_run)
    step, run, count_batch, batch = built.step, built.run, built.count_batch, built.batch
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - t0
    times, loss = time_blocks(step, device, max(1, steps // block_steps), block_steps)
    finite = bool(torch.isfinite(loss))                         # one sync, after the timing
    peak_mb = peak_memory_mb(device)
    gflop = flops_per_image(run, count_batch, batch) / 1e9
    rates = [batch * block_steps / t for t in times]
    return {"config": config_name, "variant": variant, "amp": amp, "views": views, "batch": batch,
            "median": statistics.median(rates), "min": min(rates), "max": max(rates), "gflop_per_pair": gflop,
            "peak_rss_mb": peak_mb, "peak_mb": peak_mb, "steps": steps, "block_steps": block_steps,
            "warmup_s": warmup_s, "finite": finite}


def gpu_row(r, peaks):
    """One --device cuda / --dry-run table row: the measure() dict against the peaks (TFLOP/s)."""
    tflops = r["median"] * r["gflop_per_pair"] / 1e3
    mfu = 100 * tflops / peaks[PEAK_OF_AMP[r["amp"]]]
    _, size, _, _ = CONFIGS[r["config"]]
    label = f"{r['config']} ({size}px b{r['batch']})"
    flag = "" if r["finite"] else "  loss not finite!"
    return (f"{label:<34} {r['amp']:>4} {r['views']:>6} {r['median']:9.1f} {r['min']:8.1f}-{r['max']:<8.1f} "
            f"{r['gflop_per_pair']:8.3f} {tflops:8.2f} {mfu:5.1f}% {r['peak_mb']:8.0f}MB {r['warmup_s']:7.1f}s{flag}")


GPU_HEADER = (f"{'config (px, batch per GPU)':<34} {'amp':>4} {'views':>6} {'img/s':>9} {'min-max':>17} "
              f"{'GFLOP/img':>8} {'TFLOP/s':>8} {'MFU':>6} {'peak mem':>10} {'warm-up':>8}")


def gpu_main(args):
    """--device cuda and --dry-run: the peaks, then every config in this process, one row each."""
    import torch
    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/step.py: --device cuda but torch sees no CUDA device; run it on a GPU machine, or pass "
                 "--dry-run to exercise it on the CPU")
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({host.cpu_model()})"
    print(f"device: {what}; torch {torch.__version__}; cuDNN TF32 {torch.backends.cudnn.allow_tf32}, float32 "
          f"matmul precision {torch.get_float32_matmul_precision()}{'; DRY RUN (tiny configs)' * args.dry_run}")
    peaks = matmul_peaks(device, args.dry_run)
    print("matmul peak TFLOP/s: " + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items()), flush=True)
    if args.peaks_only:
        return
    print(GPU_HEADER)
    for config in args.configs:
        for variant in args.variants:
            try:
                r = measure(config, variant, args.steps, args.warmup, device.type, args.amp, args.views,
                            args.block_steps, args.dry_run)
            except (Exception, SystemExit) as e:    # noqa: BLE001 - one config's failure is a row, not the end
                print(f"{config:<34} {args.amp:>4} {args.views:>6} failed: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:160] if str(e) else ''}", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            print(gpu_row(r, peaks) + (f"  [{variant}]" if len(args.variants) > 1 else ""), flush=True)
    print(f"img/s: median over {max(1, args.steps // args.block_steps)} blocks of {args.block_steps} steps after "
          f"{args.warmup} warm-up steps (warm-up: their wall time); an image = all its views; GFLOP/img: forward + "
          f"backward by torch.utils.flop_counter; MFU against the {PEAK_OF_AMP[args.amp]} matmul peak; variant "
          f"{' '.join(args.variants)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                   help="default: the CPU configs; with --device cuda or --dry-run the GPU configs")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   help="default: channels_last_unfused and default on the CPU; channels_last on CUDA")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", choices=list(AMPS), default="none", help="autocast dtype (none: float32)")
    p.add_argument("--views", choices=("host", "device"), default="host",
                   help="device: the batched augmentation from uint8 images runs inside the timed step")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="every GPU config, tiny, on the CPU, one warm-up and one timed step")
    p.add_argument("--peaks_only", action="store_true", help="--device cuda: print the matmul peaks and stop")
    p.add_argument("--steps", type=int, help="timed steps after warm-up (default: 5 on the CPU, 30 on CUDA)")
    p.add_argument("--block_steps", type=int, help="steps per timed block (default: 1 on the CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default: 2 on the CPU, 10 on CUDA)")
    p.add_argument("--one", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu_table = args.device == "cuda" or args.dry_run
    defaults = (dict(steps=1, block_steps=1, warmup=1) if args.dry_run else
                dict(steps=30, block_steps=10, warmup=10) if gpu_table else dict(steps=5, block_steps=1, warmup=2))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.configs = args.configs or (GPU_CONFIGS if gpu_table else CPU_CONFIGS)
    args.variants = args.variants or (["channels_last"] if gpu_table else ["channels_last_unfused", "default"])
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.warmup, args.device, args.amp, args.views,
                                 args.block_steps)))
        return
    if gpu_table:
        gpu_main(args)
        return
    line, rate = host.header()
    print(line)
    print(f"{'config (method, px, batch, flags)':<38} {'variant':<22} {'img/s median':>12} {'min-max':>13} "
          f"{'GFLOP/pair':>10} {'GFLOP/s':>8} {'% of mm':>7} {'peak RSS':>9}")
    for config in args.configs:
        for variant in args.variants:
            out = subprocess.run([sys.executable, __file__, "--one", config, variant, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup)], capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                print(f"{config:<38} {variant:<22} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            achieved = r["median"] * r["gflop_per_pair"]
            method, size, batch, flags = CONFIGS[config]
            label = f"{config} ({size}px b{batch})"
            print(f"{label:<38} {variant:<22} {r['median']:12.1f} {r['min']:6.1f}-{r['max']:<6.1f} "
                  f"{r['gflop_per_pair']:10.3f} {achieved:8.1f} {100 * achieved / rate:6.0f}% "
                  f"{r['peak_rss_mb']:7.0f}MB", flush=True)
    print(f"median of {args.steps} steps after {args.warmup} warm-up steps; GFLOP/pair counts forward + backward "
          f"of both views (torch.utils.flop_counter; MoCo's key view is forward only; SwAV: all crops of an image); "
          f"img/s counts image pairs (SwAV: images, each with all its crops)")
    for name, (method, size, batch, flags) in CONFIGS.items():
        if name in args.configs:
            print(f"  {name}: --method {method} {' '.join(flags)} at {size} px, batch {batch}")


if __name__ == "__main__":
    main()
