"""torch.compile for the training step: whether a run compiles (--compile auto|on|off), where the compiled
kernels are cached, and eager execution, with a one-line warning, where compilation fails.

Compiling costs a minute or more at start-up on a CPU (tens of seconds on a GPU) and is then paid back at
every update (bench/step.py: 1.15-1.25x at the AMDIM configs on the CPU). `auto` therefore compiles runs long
enough to repay it: the self-supervised phase of a run with at least AUTO_MIN_UPDATES updates still to go, on a
machine whose compiler toolchain inductor finds. The classifier phase trains two small heads on frozen
features: nothing worth compiling there.
"""
import importlib.util
import os
import shutil

import torch

AUTO_MIN_UPDATES = 2000     # ~25 epochs of CIFAR-10 at the default batch; any run of the seed's length
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def toolchain_missing(device):
    """Why inductor cannot compile for `device` here (a message), or None when it can: it builds C++ on the
    CPU and Triton kernels on CUDA."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    if any(c and shutil.which(c) for c in compilers):
        return None
    return "no C++ compiler on PATH (g++, c++, clang++ or $CXX)"


def decide(mode, self_supervised, updates_left, device):
    """(compile or not, the reason for the start-up line) for --compile `mode` ("auto", "on" or "off")."""
    if mode == "off":
        return False, "off (--compile off)"
    if mode == "on":
        return True, "on (--compile on)"
    if not self_supervised:
        return False, "off (auto: the classifier phase is too small to repay compiling)"
    if updates_left < AUTO_MIN_UPDATES:
        return False, (f"off (auto: {updates_left} updates to go, fewer than the {AUTO_MIN_UPDATES} that repay "
                       f"compiling; --compile on forces it)")
    missing = toolchain_missing(device)
    if missing:
        return False, f"off (auto: {missing}; --compile on tries anyway)"
    return True, f"on (auto: {updates_left} updates to go; the first updates compile, a minute or more)"


def cache_dir():
    """Inductor's on-disk cache of compiled kernels: $TORCHINDUCTOR_CACHE_DIR, else ~/.cache/amdim/inductor (a
    user cache that outlives /tmp, so a resumed or repeated run skips most of the compilation)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "amdim", "inductor")
    return os.environ.setdefault(CACHE_ENV, default)


class Fallback:
    """Calls compiled(*args, **kwargs); if its compilation fails (a missing or broken toolchain, an operator the
    compiler refuses), warns once in one line and calls eager from then on, so that a compiler problem costs
    speed, not the run. An error that eager execution raises as well is the caller's own, and is raised as it
    is."""

    def __init__(self, compiled, eager, warn):
        self.compiled, self.eager, self.warn = compiled, eager, warn
        self.failed = False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:          # noqa: BLE001 - any compiler failure; eager decides if it is ours
                self.failed = True
                self.warn(f"warning: torch.compile failed ({root_cause(e)}); training continues uncompiled "
                          f"(--compile off skips the attempt)")
        return self.eager(*args, **kwargs)


class EagerFallback(torch.nn.Module):
    """A module compiled, with Fallback's eager execution where compilation fails."""

    def __init__(self, module, warn, backend="inductor"):
        super().__init__()
        self.module = module
        # Not a registered submodule: the compiled wrapper holds `module` again, and state_dict/train()/
        # parameters() must see it once.
        self.__dict__["call"] = Fallback(torch.compile(module, backend=backend), module, warn)

    @property
    def failed(self):
        return self.call.failed

    def forward(self, *args, **kwargs):
        return self.call(*args, **kwargs)


def function(fn, warn, **options):
    """A function compiled (torch.compile's options), with Fallback's eager execution where compilation
    fails."""
    return Fallback(torch.compile(fn, **options), fn, warn)


def root_cause(error):
    """"Type: first line" of the innermost exception in `error`'s chain (torch wraps a backend's own error in
    BackendCompilerFailed, whose first line names only the backend)."""
    while getattr(error, "inner_exception", None) or error.__cause__:
        error = getattr(error, "inner_exception", None) or error.__cause__
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:200]}"
