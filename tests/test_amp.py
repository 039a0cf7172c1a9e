"""What a GPU run depends on, checked on the CPU: the mixed-precision dtype and its GradScaler (--amp_dtype),
checkpoints free of CUDA RNG state, cuDNN autotuning, and a batched augmentation without host-device syncs."""
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import augment
import checkpoint
import distributed
import imageops
import mixed_precision as mp
import runlog
import train
import utils
from helpers import ON_CPU, TINY_ENCODER, update_now
from utils import UserError

TINY = ["--dataset", "DIGITS", *TINY_ENCODER, "--batch_size", "16", *ON_CPU, "--view_grid", "0", "--log_every",
        "1000"]
CUDA = torch.device("cuda", 0)


def _setup(tmp_path, *extra):
    """A training run's Run on the CPU (no update yet), as train.worker builds it."""
    args = train.parse_args(TINY + ["--output_dir", str(tmp_path)] + list(extra))
    utils.seed_everything(args.seed)
    run, _ = train.setup(distributed.Dist(), args)
    return run


def _close(run):
    run.log.close()
    runlog.RunDirLock.release_all(failed=False)


def _fake_gpu(monkeypatch, native_bfloat16, capability=(7, 5), name="Tesla T4"):
    """torch.cuda answering for one GPU. is_bf16_supported counts emulation unless told not to, as the real one
    does: a T4 (sm_75) says True by default and False with including_emulation=False."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native_bfloat16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


# ----------------------------------------------------------------------------------------------------------
# The autocast dtype.

def test_auto_picks_float16_on_a_gpu_that_only_emulates_bfloat16(monkeypatch):
    _fake_gpu(monkeypatch, native_bfloat16=False)
    assert mp.resolve(CUDA, True, "auto") == torch.float16
    assert mp.resolve(CUDA, True, "float16") == torch.float16
    with pytest.raises(UserError, match=r"^--amp_dtype bfloat16: Tesla T4 \(sm_75\) has no native bfloat16"):
        mp.resolve(CUDA, True, "bfloat16")
    _fake_gpu(monkeypatch, native_bfloat16=True, capability=(9, 0), name="H100")
    assert mp.resolve(CUDA, True, "auto") == torch.bfloat16
    assert mp.resolve(CUDA, True, "bfloat16") == torch.bfloat16
    assert mp.resolve(CUDA, False, "float16") is None


def test_cpu_autocasts_to_either_dtype_and_scales_float16_only():
    cpu = torch.device("cpu")
    assert mp.resolve(cpu, False) is None and mp.resolve(cpu, True, "auto") == torch.bfloat16
    for name in ("bfloat16", "float16"):
        dtype = mp.resolve(cpu, True, name)
        with mp.autocast(cpu, dtype):
            assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == dtype
        assert mp.grad_scaler(cpu, dtype).is_enabled() == (name == "float16")
    assert not mp.grad_scaler(cpu, None).is_enabled()
    with mp.autocast(cpu, None):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32


def test_amp_dtype_needs_amp_and_defaults_to_auto(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(TINY + ["--amp_dtype", "float16"])
    assert e.value.code == 2 and "--amp_dtype float16 applies to mixed precision: add --amp" in capsys.readouterr().err
    assert train.parse_args(TINY + ["--amp"]).amp_dtype == "auto"


def test_a_dtype_the_device_cannot_do_is_refused_before_anything_is_written(monkeypatch, tmp_path):
    # The probe: CPU autocast stays off for a dtype it lacks (it does for float64, say).
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: False)
    with pytest.raises(UserError, match=r"^--amp_dtype float16: autocast on cpu cannot use it; pass --amp_dtype "
                                        r"auto$"):
        train.main(TINY + ["--amp", "--amp_dtype", "float16", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_float16_on_cpu_trains_with_a_grad_scaler_that_skips_inf_steps_and_resumes(tmp_path):
    run = _setup(tmp_path, "--amp", "--amp_dtype", "float16")
    assert run.amp == torch.float16 and run.scaler.is_enabled()
    batches = iter(train.make_loaders(run))
    run.scaler.load_state_dict(dict(run.scaler.state_dict(), scale=256.0))   # these gradients fit float16
    before = [p.detach().clone() for p in run.model.parameters()]
    values, _ = update_now(run, next(batches), epoch=0)
    assert math.isfinite(values["loss"]) and run.scaler.get_scale() == 256.0
    assert any(not torch.equal(p, b) for p, b in zip(run.model.parameters(), before))

    # An inf gradient: the scaler skips the optimizer step (no weight moves) and halves the scale.
    hook = next(run.model.parameters()).register_hook(lambda g: g * math.inf)
    before = [p.detach().clone() for p in run.model.parameters()]
    values, _ = update_now(run, next(batches), epoch=0)
    hook.remove()
    assert math.isfinite(values["loss"]) and run.scaler.get_scale() == 128.0
    assert all(torch.equal(p, b) for p, b in zip(run.model.parameters(), before))

    checkpoint.save_run(run)
    state = run.scaler.state_dict()
    _close(run)
    ckpt = checkpoint.read(run.cpt_path)
    assert ckpt["scaler"] == state and ckpt["run_info"]["config"]["amp_dtype"] == "float16"
    resumed = _setup(tmp_path, "--amp", "--amp_dtype", "float16")
    assert resumed.scaler.state_dict() == state
    _close(resumed)


def test_a_cuda_runs_checkpoint_resumes_on_the_cpu_with_the_cpus_fused_step(tmp_path):
    """A CUDA run saves its optimizer groups with fused=False; resumed on the CPU (fused there, so GradScaler
    hands the step its scale) the groups keep this run's fused step, which takes the scale: an update runs."""
    run = _setup(tmp_path, "--amp", "--amp_dtype", "float16")
    assert all(g["fused"] for g in run.optimizer.param_groups)
    checkpoint.save_run(run)
    _close(run)
    ckpt = checkpoint.read(run.cpt_path)
    for group in ckpt["optimizer"]["param_groups"]:
        group["fused"] = False                                  # as a CUDA run's file
    torch.save(ckpt, run.cpt_path)
    resumed = _setup(tmp_path, "--amp", "--amp_dtype", "float16")
    assert all(g["fused"] for g in resumed.optimizer.param_groups)
    values, _ = update_now(resumed, next(iter(train.make_loaders(resumed))), epoch=0)
    assert values is not None and math.isfinite(values["loss"])
    _close(resumed)


# ----------------------------------------------------------------------------------------------------------
# CUDA random state: none in checkpoints; each rank seeds its own device.

def test_checkpoints_hold_no_rng_state_so_another_gpu_count_resumes(monkeypatch, tmp_path):
    """Saved where 4 GPUs are visible, resumed where 2 are. Checkpoints once held every visible GPU's RNG
    state (get_rng_state_all), whose restore failed with IndexError on fewer GPUs; training now re-seeds from
    its position instead (train.reseed), so no RNG state is saved or restored."""
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[0])
    run = _setup(tmp_path)
    checkpoint.save_run(run)
    _close(run)
    ckpt = checkpoint.read(run.cpt_path)
    assert not [k for k in ckpt if "rng" in k.lower()]

    def fewer_gpus(*args, **kwargs):
        raise IndexError("list index out of range")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("set_rng_state_all", "set_rng_state"):
        monkeypatch.setattr(torch.cuda, name, fewer_gpus)
    resumed = _setup(tmp_path)
    assert resumed.cursor == run.cursor
    _close(resumed)


class _Generator:
    def __init__(self):
        self.seeds = []

    def manual_seed(self, seed):
        self.seeds.append(seed)


def test_reseed_seeds_the_ranks_own_gpu_only(monkeypatch):
    generators = (_Generator(), _Generator())
    monkeypatch.setattr(torch.cuda, "default_generators", generators)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    utils.reseed(7, torch.device("cuda", 1))
    utils.reseed(8, torch.device("cuda"))              # a single process's "cuda": the current device
    utils.reseed(9, torch.device("cpu"))
    assert generators[0].seeds == [] and generators[1].seeds == [7, 8]


def test_cudnn_autotunes_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    train.tune_cudnn(torch.device("cpu"))
    assert not torch.backends.cudnn.benchmark
    train.tune_cudnn(CUDA)
    assert torch.backends.cudnn.benchmark


# ----------------------------------------------------------------------------------------------------------
# The batched augmentation waits for no GPU work.

# aten operations that copy a result to the host, so that on a GPU the CPU waits for every queued kernel:
# a data-dependent shape (nonzero, masked_select, unique), a Python number (item, bool(), int(), float()
# end in _local_scalar_dense), a comparison returning bool.
_SYNCING_ATEN = {"nonzero", "masked_select", "_local_scalar_dense", "unique", "_unique", "_unique2", "equal",
                 "is_nonzero", "unique_consecutive", "unique_dim"}


class _SyncRecorder(TorchDispatchMode):
    """Records the aten operations that would wait for a GPU: the syncing ones above, indexing with a boolean
    mask (a nonzero inside), tensors made from Python data (lift_fresh: a blocking upload to a GPU) and copies
    between devices."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _SYNCING_ATEN or name.startswith("lift_fresh") or _bool_index(name, args) \
                or _crosses_devices(name, args, kwargs):
            self.calls.append(name)
        return func(*args, **kwargs)


def _bool_index(name, args):
    if name not in ("index", "index_put", "index_put_"):
        return False
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in args[1] or ())


def _crosses_devices(name, args, kwargs):
    if name == "_to_copy":
        return "device" in kwargs and torch.device(kwargs["device"]) != args[0].device
    return name == "copy_" and args[0].device != args[1].device


class _HostReads(TorchFunctionMode):
    """Records reads of tensor data into Python and device transfers that the CPU alone does not dispatch
    (tolist, numpy; .to()/.cuda() naming a device, which is a no-op on the CPU)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        moves = name in ("to", "cuda") and any(isinstance(a, (torch.device, str)) or
                                                (isinstance(a, torch.Tensor) and i > 0)
                                                for i, a in enumerate(list(args) + list(kwargs.values())))
        if name in ("tolist", "numpy") or moves:
            self.calls.append(name)
        return func(*args, **kwargs)


def count_syncs(fn, *args):
    """(names of) everything in fn(*args) that would make the host wait for a GPU."""
    with _HostReads() as reads, _SyncRecorder() as syncs:
        fn(*args)
    return reads.calls + syncs.calls


@pytest.mark.parametrize("kind,recipe,size", [("amdim", "cifar", 32), ("amdim", "stl", 80),
                                              ("moco_v1", "cifar", 40), ("moco_v2", "cifar", 40),
                                              ("cmc", "stl", 80)])
def test_batched_augmentation_makes_no_host_device_sync(kind, recipe, size, monkeypatch):
    images = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8)
    views = augment.make_views(kind, recipe, batched=True)
    views(images)                    # the first call puts the constants on the device
    # On the CPU the views read their draws to skip work (free there); a GPU runs the masked passes: check those.
    # (CMC's views have no pass that only some samples take.)
    assert (count_syncs(views, images) != []) == (kind != "cmc")
    monkeypatch.setattr(imageops, "SKIPS_ON", ())
    assert count_syncs(views, images) == []
    # The recorder sees what it is meant to: the per-sample gather this code once did.
    chosen = torch.rand(8) < 0.5
    assert count_syncs(lambda x: x[chosen], images) == ["index"]
    assert count_syncs(lambda x: x[chosen.nonzero().squeeze(1)], images) == ["nonzero"]
    assert count_syncs(lambda x: torch.tensor([1.0]).to(x.device), images) == ["to", "lift_fresh"]


def _color_jitter_by_gather(x, brightness, contrast, saturation, hue, p):
    """color_jitter as it was: the samples taking each operation at each place gathered (a nonzero, a sync)."""
    b = x.shape[0]
    apply = torch.rand(b) < p
    factors = [torch.empty(b).uniform_(1 - brightness, 1 + brightness),
               torch.empty(b).uniform_(1 - contrast, 1 + contrast),
               torch.empty(b).uniform_(1 - saturation, 1 + saturation), torch.empty(b).uniform_(-hue, hue)]
    order = torch.argsort(torch.rand(b, 4), dim=1)
    x = x.clone()
    for position in range(4):
        for k, op in enumerate((imageops._brightness, imageops._contrast, imageops._saturation, imageops._hue)):
            chosen = (apply & (order[:, position] == k)).nonzero().squeeze(1)
            x[chosen] = op(x[chosen], factors[k][chosen].view(-1, 1, 1, 1))
    return x


@pytest.mark.parametrize("hue,p", [(0.2, 0.8), (0.4, 1.0)])
def test_sync_free_color_jitter_equals_the_gathering_one(hue, p):
    """Same draws, same images out: the masked passes change no distribution."""
    x = torch.rand(300, 3, 12, 12)
    torch.manual_seed(3)
    ours = imageops.color_jitter(x, 0.4, 0.4, 0.4, hue, p)
    torch.manual_seed(3)
    assert torch.allclose(ours, _color_jitter_by_gather(x, 0.4, 0.4, 0.4, hue, p), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# TF32 (--tf32).

CUDA = torch.device("cuda", 0)      # only compared, never used: nothing here runs on a GPU


def test_tf32_is_on_for_float32_cuda_runs_only():
    assert mp.tf32(CUDA, None) is True and mp.tf32(CUDA, None, "on") is True
    assert mp.tf32(CUDA, None, "off") is False
    for amp in (torch.bfloat16, torch.float16, True):        # a run's resolved dtype, test.py's --amp
        assert mp.tf32(CUDA, amp) is False
    assert mp.tf32(CUDA, False) is True                      # test.py without --amp
    for device in (torch.device("cpu"), torch.device("mps")):
        assert mp.tf32(device, None) is None and mp.tf32(device, None, "off") is None


@pytest.fixture
def tf32_switches():
    """Restores torch's TF32 switches after the test (set_tf32 sets them process-wide)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_set_tf32_switches_cuda_matmuls_and_cudnn_and_leaves_the_cpu_alone(tf32_switches):
    cpu_matmul = torch.backends.mkldnn.matmul.fp32_precision
    mp.set_tf32(True)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"     # what set_float32_matmul_precision("high") sets
    assert torch.backends.mkldnn.matmul.fp32_precision == cpu_matmul
    mp.set_tf32(None)                                         # the CPU: nothing changes
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    mp.set_tf32(False)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"


def test_a_run_states_its_tf32_decision_in_the_start_line_and_the_config(tmp_path, capsys, monkeypatch,
                                                                          tf32_switches):
    run = _setup(tmp_path, "--run_name", "cpu")
    _close(run)
    assert run.tf32 is None and run.log.run_info["config"]["tf32"] is None
    assert "amp off (float32), tf32 n/a (not CUDA)" in capsys.readouterr().out
    # The decision a CUDA device would get, on the CPU: setup applies it and records it.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    asked = []
    monkeypatch.setattr(mp, "tf32", lambda device, amp, requested: asked.append((amp, requested)) or True)
    run = _setup(tmp_path, "--run_name", "fake_cuda", "--tf32", "on")
    _close(run)
    assert asked == [(None, "on")] and run.tf32 is True and run.log.run_info["config"]["tf32"] is True
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert "tf32 on" in capsys.readouterr().out
