"""Mixed precision through torch.amp: which dtype to autocast to, the gradient scaler, and float32 regions.

Every precision decision lives here (model.py and costs.py stay precision-free). The original used NVIDIA
apex; everything here is PyTorch's own. `--amp` autocasts to `--amp_dtype`: "auto" is bfloat16 where the
device computes it natively (CUDA from sm_80, ROCm, the CPU) and float16 otherwise (CUDA sm_75: T4, RTX 20xx);
float16 always trains with a GradScaler, on CUDA and on the CPU alike, bfloat16 never needs one.
"""
import contextlib
import warnings

import torch

from utils import UserError

AMP_DTYPES = ("auto", "bfloat16", "float16")


def native_bfloat16(device):
    """Whether `device` computes bfloat16 in hardware. On CUDA this asks about the current device, which is the
    rank's own (distributed.init_distributed sets it). including_emulation=False: sm_75 passes the default check
    by emulating bfloat16, far slower than its float16 tensor cores."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True


def supports(device, dtype):
    """Whether `device` can autocast to `dtype` (bfloat16 on CUDA only natively)."""
    if device.type == "cuda":
        return dtype == torch.float16 or native_bfloat16(device)
    # Other device types: ask autocast itself, which warns and stays off for a dtype it lacks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device.type, dtype=dtype):
            return torch.is_autocast_enabled(device.type)


def resolve(device, enabled, requested="auto"):
    """The run's autocast dtype: None without --amp, else `requested` ("auto", "bfloat16" or "float16") on
    `device`. Raises UserError for a dtype the device cannot do."""
    if not enabled:
        return None
    if requested == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float16
    dtype = getattr(torch, requested)
    if not supports(device, dtype):
        raise UserError(refusal(device, requested))
    return dtype


def refusal(device, requested):
    """The one line that refuses `--amp_dtype requested` on `device`."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (f"--amp_dtype {requested}: {torch.cuda.get_device_name(device)} (sm_{major}{minor}) has no native "
                f"bfloat16 (emulated, slower than float16); pass --amp_dtype float16 or auto")
    return f"--amp_dtype {requested}: autocast on {device.type} cannot use it; pass --amp_dtype auto"


def dtype_name(dtype):
    """"bfloat16", "float16", or None (float32: no autocast), for configs and logs."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def describe(amp):
    """A run's resolved dtype for the start-up line."""
    if amp is None:
        return "off (float32)"
    return dtype_name(amp) + (" with a GradScaler" if amp == torch.float16 else "")


def autocast(device, amp):
    """Context that runs the model in reduced precision. amp: None or False (float32: does nothing), a torch
    dtype (a run's resolved --amp_dtype), or True (the device's "auto" dtype: test.py's --amp)."""
    if amp is None or amp is False:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=resolve(device, True) if amp is True else amp)


def float32(device):
    """Context that turns autocast off, so the NCE scores, tanh clip and log-softmax run in float32.

    Callers still cast their (possibly reduced-precision) inputs with .float().
    """
    return torch.autocast(device_type=device.type, enabled=False)


def grad_scaler(device, amp):
    """A GradScaler that is active only where float16 needs loss scaling (its narrow exponent range underflows
    small gradients); bfloat16 has float32's range. amp: a run's resolved dtype or None."""
    return torch.amp.GradScaler(device.type, enabled=amp == torch.float16)


def step(optimizer, scaler, skip):
    """optimizer.step() (through the GradScaler `scaler` when it is enabled), doing nothing where the 0-dim bool
    tensor `skip` is true, decided on the device: the host never reads `skip`, so nothing waits for a GPU.

    torch's fused optimizers (recipes.make_optimizer and make_larc build every optimizer fused) take a
    `found_inf` tensor and skip their whole step in the kernel where it is non-zero, state included; GradScaler
    hands them its own. Under float16, `skip` joins the scaler's overflow check after an explicit unscale_, so
    the fused step gets unscaled gradients and the scaler backs off as for an overflow. An optimizer without
    found_inf support falls back to reading `skip` on the host (one sync)."""
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
        # The scaler's per-device overflow flags (float 0/1), read by its step() and update(); a private but
        # long-stable part of torch.amp.GradScaler (unchanged since torch 1.6).
        for found in scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values():
            torch.maximum(found, skip.to(found), out=found)
        scaler.step(optimizer)
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.grad_scale, optimizer.found_inf = None, skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif not bool(skip):
        optimizer.step()


def to_float32(tree):
    """Every floating tensor in a dict/list/tuple tree cast to float32 (float32 tensors are returned as they
    are), for the float32 region where losses are computed."""
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {k: to_float32(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_float32(v) for v in tree)
    return tree


# TF32: float32 matmuls and convolutions on the tensor cores of Ampere and later GPUs, with a 10-bit mantissa
# (float32's range), several times faster than full float32.

TF32_CHOICES = ("on", "off")


def tf32(device, amp, requested="on"):
    """Whether float32 matmuls and convolutions may use TF32 (--tf32): True for a float32 run on CUDA unless
    requested is "off"; False on CUDA otherwise (under autocast the regions kept in float32, the NCE scores
    and log-softmax, stay full float32); None on other devices, where it does not apply. amp: whether the run
    autocasts (a resolved dtype or True; None or False for float32)."""
    if device.type != "cuda":
        return None
    return requested == "on" and (amp is None or amp is False)


def set_tf32(enabled):
    """Apply tf32()'s decision to the process (None: leave everything as it is). Only CUDA's switches, through
    the API torch's compiler reads: torch.set_float32_matmul_precision("high") would also let oneDNN's CPU
    matmuls drop precision, and setting the newer fp32_precision switches as well makes reading the older
    ones raise."""
    if enabled is None:
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def describe_tf32(enabled):
    """tf32()'s decision for the start-up line."""
    return {True: "on", False: "off", None: "n/a (not CUDA)"}[enabled]
