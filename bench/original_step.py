"""The original AMDIM code's training step (Philip-Bachman/amdim-public: its Model, with the NCE costs inside its
forward, and its Adam) timed on the same device and in the same columns as bench/step.py, at the two AMDIM
configs of bench/step.py's GPU set (amdim-c10, amdim-in128), so that the two code bases compare side by side.

The original is not part of this repository: put a copy in bench/original/ (git-ignored; never commit it):

    git --git-dir=<a clone's .git> archive HEAD | tar -x -C bench/original

    python3 bench/original_step.py --device cuda [--amp bf16|fp16] [--configs amdim-c10]
    .venv/bin/python bench/original_step.py --dry-run      # both configs tiny on the CPU (with the CPU shims below)

The timed step is the original's (task_self_supervised._train): forward of both views (encoder, the multi-scale
NCE costs, the classifiers on detached features), the same loss sum, zero_grad, backward, Adam step (betas 0.8,
0.999, weight decay 1e-5), the model in its contiguous layout and cuDNN autotuning off, as the original leaves
it. Left out: its per-update .item() logging and the learning-rate warm-up arithmetic (host work); its NCE's own
host sync (mask_mat.sum().item()) stays, it is in the model. --amp: torch.autocast around the forward (and a
GradScaler for fp16) in place of the original's apex O2, which modern torch lacks.

Shims, applied here and never by editing the copy: a stand-in apex.fp16_utils (imported at the top of its
mixed_precision.py, used only with apex's amp); its uint8 masks (modern torch takes bool masks only):
masked_fill_ takes them as bool while the model is built, and its masked_select mask is made bool after
construction; on the CPU (--dry-run, --device cpu), Tensor.cuda as the identity and torch.cuda.device_count() as 1
(its NCE builds mask_mat with .cuda() and spreads the costs over device_count() replicas).
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
import types

BENCH = os.path.dirname(os.path.abspath(__file__))
ORIGINAL = os.path.join(BENCH, "original")
sys.path.insert(0, BENCH)

import step     # bench/step.py: the table's columns, the matmul peaks and the block timing

# name: (image size, batch, ndf, n_rkhs, n_depth): bench/step.py's AMDIM GPU configs.
CONFIGS = {"amdim-c10": (32, 256, 128, 1024, 3), "amdim-in128": (128, 120, 192, 1536, 8)}
TINY = dict(batch=step.TINY_BATCH, ndf=8, n_rkhs=64, n_depth=1)
N_CLASSES = 10          # as bench/step.py's models


def import_original(device):
    """The original's model module, imported from ORIGINAL with the shims above. Exits with one line when the copy
    is absent."""
    import torch
    if not os.path.isfile(os.path.join(ORIGINAL, "model.py")):
        sys.exit(f"bench/original_step.py: no copy of the original AMDIM code in {ORIGINAL}: put one there (git "
                 f"--git-dir=<clone>/.git archive HEAD | tar -x -C {ORIGINAL}) and run again")
    apex = types.ModuleType("apex")
    apex.fp16_utils = types.ModuleType("apex.fp16_utils")
    apex.fp16_utils.FP16_Optimizer = type("FP16_Optimizer", (), {})
    sys.modules.setdefault("apex", apex)
    sys.modules.setdefault("apex.fp16_utils", apex.fp16_utils)
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.cuda.device_count = lambda: 1
    sys.path.insert(0, ORIGINAL)        # its model, costs, utils and mixed_precision, not ours
    import model as original_model
    if not os.path.abspath(original_model.__file__).startswith(ORIGINAL):
        sys.exit(f"bench/original_step.py: imported {original_model.__file__}, not the original's model.py")
    return original_model


@contextlib.contextmanager
def bool_fill_masks():
    """Tensor.masked_fill_ taking uint8 masks as bool ones, while the original builds its model (its shortcut
    initialisation fills through a uint8 identity mask)."""
    import torch
    fill = torch.Tensor.masked_fill_
    torch.Tensor.masked_fill_ = lambda self, mask, value: fill(self, mask.bool(), value)
    try:
        yield
    finally:
        torch.Tensor.masked_fill_ = fill


def build(original_model, config, device, amp, dry_run):
    """(step, forward_loss, views, batch): the original's model and Adam on `device`; step() runs one update and
    returns its loss tensor; forward_loss() the loss alone (for the flop counter)."""
    import torch
    import torch.nn as nn
    from costs import loss_xent                         # the original's costs.py (ORIGINAL is first on the path)
    size, batch, ndf, n_rkhs, n_depth = CONFIGS[config]
    if dry_run:
        batch, ndf, n_rkhs, n_depth = TINY["batch"], TINY["ndf"], TINY["n_rkhs"], TINY["n_depth"]
    torch.manual_seed(0)
    with bool_fill_masks():
        model = original_model.Model(ndf=ndf, n_classes=N_CLASSES, n_rkhs=n_rkhs, tclip=20.0, n_depth=n_depth,
                                     encoder_size=size, use_bn=False)
    model.init_weights(init_scale=1.0)
    masks = model.g2l_loss.masks_r5
    model.g2l_loss.masks_r5 = nn.Parameter(masks.data.bool(), requires_grad=False)
    model = model.to(device)
    torch.backends.cudnn.benchmark = False              # the original never turns it on
    optimizer = torch.optim.Adam([{"params": m.parameters(), "lr": 2e-4} for m in
                                  model.info_modules + model.class_modules],
                                 betas=(0.8, 0.999), weight_decay=1e-5, eps=1e-8)
    dtype = step.AMPS[amp] and getattr(torch, step.AMPS[amp])
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(2))
    labels = torch.randint(0, N_CLASSES, (batch,), generator=g).to(device)
    labels = torch.cat([labels, labels])

    def forward_loss():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            res = model(x1=x1, x2=x2, class_only=False)
        mlp, lin = res["class"]
        loss_inf = res["g2l_1t5"] + res["g2l_1t7"] + res["g2l_5t5"] + res["lgt_reg"]
        return loss_inf + loss_xent(mlp.float(), labels) + loss_xent(lin.float(), labels)

    def one_step():
        loss = forward_loss()
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return one_step, forward_loss, batch


def measure(original_model, config, device, amp, steps, warmup, block_steps, dry_run):
    """One config: the same dict as bench/step.py's measure()."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    one_step, forward_loss, batch = build(original_model, config, device, amp, dry_run)
    t0 = time.perf_counter()
    for _ in range(warmup):
        one_step()
    step.synchronize(device)
    warmup_s = time.perf_counter() - t0
    times, loss = step.time_blocks(one_step, device, max(1, steps // block_steps), block_steps)
    finite = bool(torch.isfinite(loss))
    peak_mb = step.peak_memory_mb(device)
    with FlopCounterMode(display=False) as counter:
        forward_loss().backward()
    rates = [batch * block_steps / t for t in times]
    return {"config": config, "variant": "original", "amp": amp, "views": "host", "batch": batch,
            "median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "gflop_per_pair": counter.get_total_flops() / batch / 1e9, "peak_mb": peak_mb, "warmup_s": warmup_s,
            "finite": finite}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--amp", choices=list(step.AMPS), default="none", help="autocast dtype (none: float32)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="both configs tiny on the CPU, one warm-up and one timed step")
    p.add_argument("--steps", type=int, default=30, help="timed steps after warm-up")
    p.add_argument("--block_steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args()
    if args.dry_run:
        args.device, args.steps, args.block_steps, args.warmup = "cpu", 1, 1, 1
    import torch
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/original_step.py: --device cuda but torch sees no CUDA device; pass --dry-run on the CPU")
    original_model = import_original(device)
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"the original AMDIM code on {what}; torch {torch.__version__}"
          f"{'; DRY RUN (tiny configs)' * args.dry_run}")
    peaks = step.matmul_peaks(device, args.dry_run)
    print("matmul peak TFLOP/s: " + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items()), flush=True)
    print(step.GPU_HEADER)
    for config in args.configs:
        try:
            r = measure(original_model, config, device, args.amp, args.steps, args.warmup, args.block_steps,
                        args.dry_run)
        except Exception as e:                  # noqa: BLE001 - one config's failure is a row, not the end
            print(f"{config:<34} {args.amp:>4} {'host':>6} failed: {type(e).__name__}: "
                  f"{(str(e).splitlines() or [''])[0][:160]}", flush=True)
            continue
        print(step.gpu_row(r, peaks) + "  [original]", flush=True)
    print(f"the original's step (see the docstring); img/s: median over {max(1, args.steps // args.block_steps)} "
          f"blocks of {args.block_steps} steps after {args.warmup} warm-up steps; MFU against the "
          f"{step.PEAK_OF_AMP[args.amp]} matmul peak")


if __name__ == "__main__":
    main()
