"""Mixed precision through torch.amp: which dtype to autocast to, the gradient scaler, and float32 regions.

The original used NVIDIA apex; everything here is PyTorch's own. On CUDA we autocast to bfloat16 where the GPU
supports it (no loss scaling needed) and to float16 with a GradScaler otherwise; on CPU to bfloat16.
"""
import contextlib

import torch


def amp_dtype(device):
    """The autocast dtype for `device` (a torch.device)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device, enabled):
    """Context that runs the model in reduced precision when `enabled`, else does nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))


def float32(device):
    """Context that turns autocast off, so the NCE scores, tanh clip and log-softmax run in float32.

    Callers still cast their (possibly reduced-precision) inputs with .float().
    """
    return torch.autocast(device_type=device.type, enabled=False)


def grad_scaler(device, enabled):
    """A GradScaler that is active only where float16 needs loss scaling (CUDA without bf16)."""
    active = enabled and device.type == "cuda" and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=active)


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
