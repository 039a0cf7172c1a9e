"""Checkpoints: the original code's fixture, format translation, atomic writes and refusing unsafe files."""
import io
import os
import pickle
import signal

import pytest
import torch

import checkpoint
from utils import UserError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ORIGINAL = os.path.join(FIXTURES, "amdim_original_c10_tiny.pth")
EXPECTED = os.path.join(FIXTURES, "amdim_original_c10_tiny.expected.pt")


def _outputs(m, x):
    m.eval()
    with torch.no_grad():
        r1, r5, r7 = m.encoder(x)
        mlp, lin = m.evaluator(r1)
    return dict(r1=r1, r5=r5, r7=r7, logits_mlp=mlp, logits_lin=lin)


def test_original_checkpoint_reproduces_its_recorded_outputs():
    m = checkpoint.load_model(ORIGINAL)
    expected = torch.load(EXPECTED, weights_only=True)
    got = _outputs(m, expected["input"])
    for k in ("r1", "r5", "r7", "logits_mlp", "logits_lin"):
        assert torch.allclose(got[k], expected[k], atol=1e-5, rtol=0), k
    assert m.hyperparams["ndf"] == 8 and m.hyperparams["use_bn"] is False


def test_float16_weights_load_as_float32(tmp_path):
    ckpt = torch.load(ORIGINAL, weights_only=True)
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    path = tmp_path / "half.pth"
    torch.save(ckpt, path)
    # The translation is where the weights turn float32: load_state_dict would copy float16 values into the
    # float32 parameters anyway, so the model alone cannot show whether they were converted.
    half = torch.load(path, weights_only=True)["model"]
    translated = checkpoint.translate_state_dict(half, checkpoint.build_model(checkpoint.hyperparams(ckpt)))
    floats = {k: v for k, v in translated.items() if v.is_floating_point()}
    assert floats and all(v.dtype == torch.float32 for v in floats.values())
    m = checkpoint.load_model(str(path))
    state, full = m.state_dict(), checkpoint.load_model(ORIGINAL).state_dict()
    for k in floats:
        assert state[k].dtype == torch.float32, k
        assert torch.equal(state[k], full[k].half().float()), k      # the stored float16 values, widened
    expected = torch.load(EXPECTED, weights_only=True)
    got = _outputs(m, expected["input"])
    assert torch.allclose(got["r1"], expected["r1"], atol=0.05)


def _as_original_keys(state_dict):
    """Rewrite our keys in the original's naming: DataParallel prefix, MaybeBatchNorm2d's inner `.bn`."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace("encoder.", "encoder.module.", 1)
        parts = k.split(".")
        if parts[-1] in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked") and \
                parts[0] == "encoder" and (parts[-2].startswith("bn") or parts[-2] in ("4", "8")):
            parts.insert(len(parts) - 1, "bn")
        out[".".join(parts)] = v
    out["g2l_loss.masks_r5"] = torch.zeros(25, 1, 5, 5, dtype=torch.uint8)
    return out


def test_original_format_with_batchnorm_loads_with_use_bn_honoured(tmp_path):
    src = checkpoint.build_model(dict(ndf=8, n_classes=10, n_rkhs=32, n_depth=2, encoder_size=32, use_bn=True,
                                      tclip=20.0))
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for b in src.buffers():
            if b.is_floating_point():
                b.add_(0.1)
    path = tmp_path / "orig_bn.pth"
    torch.save({"model": _as_original_keys(src.state_dict()), "hyperparams": dict(src.hyperparams),
                "cursor": {"info_epoch": 1, "info_step": 2, "classifier_epoch": 0, "classifier_step": 0}}, path)
    loaded = checkpoint.load_model(str(path))
    assert loaded.hyperparams["use_bn"] is True
    x = torch.randn(3, 3, 32, 32)
    a, b = _outputs(src, x), _outputs(loaded, x)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_weights_that_do_not_fit_are_reported(tmp_path):
    ckpt = torch.load(ORIGINAL, weights_only=True)
    del ckpt["model"]["encoder.module.layer_list.0.conv.weight"]
    path = tmp_path / "broken.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="do not fit"):
        checkpoint.load_model(str(path))


def test_save_is_atomic_and_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "c.pth")
    checkpoint.save({"model": {"w": torch.ones(2)}, "hyperparams": {}, "n": 1}, path)
    checkpoint.save({"model": {"w": torch.zeros(2)}, "hyperparams": {}, "n": 2}, path)
    assert torch.load(path, weights_only=True)["n"] == 2
    assert torch.load(path + ".prev", weights_only=True)["n"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.pth", "c.pth.prev"]


def test_failed_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path):
    path = str(tmp_path / "c.pth")
    checkpoint.save({"model": {}, "hyperparams": {}, "n": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        checkpoint.save({"model": {}, "bad": Unsaveable()}, path)
    assert torch.load(path, weights_only=True)["n"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.pth"]


def _serialised(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _two_saves(tmp_path):
    """A checkpoint file (n 2) with its .prev (n 1); returns the path and both files' bytes."""
    path = str(tmp_path / "c.pth")
    checkpoint.save({"model": {"w": torch.ones(64)}, "hyperparams": {}, "n": 1}, path)
    checkpoint.save({"model": {"w": torch.zeros(64)}, "hyperparams": {}, "n": 2}, path)
    return path, open(path, "rb").read(), open(path + ".prev", "rb").read()


def test_an_error_in_the_middle_of_the_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path, current, previous = _two_saves(tmp_path)
    new = _serialised({"model": {"w": torch.full((64,), 3.0)}, "hyperparams": {}, "n": 3})

    def half_then_fail(obj, f, *args, **kwargs):        # a disk that fills up half-way through the file
        f.write(new[:len(new) // 2])
        f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError):
        checkpoint.save({"n": 3}, path)
    assert open(path, "rb").read() == current and open(path + ".prev", "rb").read() == previous
    assert torch.load(path, weights_only=True)["n"] == 2
    assert sorted(os.listdir(tmp_path)) == ["c.pth", "c.pth.prev"]


def test_a_kill_in_the_middle_of_the_write_leaves_the_previous_file_intact(tmp_path):
    """A forked child saves; its write blocks half-way (after the first half reached the disk) and it is killed
    there with SIGKILL: no cleanup runs, as after a power cut or an OOM kill."""
    path, current, previous = _two_saves(tmp_path)
    new = _serialised({"model": {"w": torch.full((64,), 3.0)}, "hyperparams": {}, "n": 3})
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:                                         # the child: only file writes, no torch code
        try:
            os.close(ready_r)

            def half_then_block(obj, f, *args, **kwargs):
                f.write(new[:len(new) // 2])
                f.flush()
                os.write(ready_w, b"x")
                while True:
                    signal.pause()

            torch.save = half_then_block
            checkpoint.save({"n": 3}, path)
        finally:
            os._exit(1)                                  # never reached unless the save went wrong
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"               # the child is blocked inside the write
        os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(ready_r)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert open(path, "rb").read() == current and open(path + ".prev", "rb").read() == previous
    assert torch.load(path, weights_only=True)["n"] == 2
    # The killed save left its half-written temporary; the next run's start-up removes it.
    leftovers = [f for f in os.listdir(tmp_path) if f not in ("c.pth", "c.pth.prev")]
    assert len(leftovers) == 1 and os.path.getsize(tmp_path / leftovers[0]) == len(new) // 2
    checkpoint.remove_stale_temporaries(path)
    assert sorted(os.listdir(tmp_path)) == ["c.pth", "c.pth.prev"]


def test_save_fsyncs_the_new_file_before_renaming_it_into_place(tmp_path, monkeypatch):
    """The data must be on disk before the rename makes it the checkpoint: else a power cut after the rename can
    leave an empty or partial file under the checkpoint's name. The directory is fsynced after the rename."""
    path, _, _ = _two_saves(tmp_path)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.stat(src).st_ino, os.path.abspath(dst)))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    checkpoint.save({"model": {"w": torch.full((64,), 3.0)}, "hyperparams": {}, "n": 3}, path)
    assert torch.load(path, weights_only=True)["n"] == 3
    inode = os.stat(path).st_ino
    # The new checkpoint was written under another name and renamed onto the checkpoint's path ...
    renamed = [i for i, e in enumerate(events) if e == ("replace", inode, os.path.abspath(path))]
    assert len(renamed) == 1, events
    # ... after its own bytes were fsynced ...
    assert ("fsync", inode) in events[:renamed[0]], events
    # ... and the directory entry is fsynced after the rename.
    assert ("fsync", os.stat(tmp_path).st_ino) in events[renamed[0] + 1:], events


def test_missing_truncated_and_foreign_files_give_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.read(str(tmp_path / "nope.pth"))
    data = open(ORIGINAL, "rb").read()
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        checkpoint.read(str(truncated))
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(UserError, match="not a checkpoint this code reads .a dict of weights.: "):
        checkpoint.read(str(foreign))
    text = tmp_path / "text.pth"
    text.write_text("hello")
    with pytest.raises(UserError):
        checkpoint.read(str(text))


class _Payload:
    """Unpickling this would create a file: what a malicious checkpoint does."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "hyperparams": {}, "x": _Payload(str(target))}, path, pickle_module=pickle)
    assert not target.exists()
    with pytest.raises(UserError, match="refusing to load"):
        checkpoint.read(str(path))
    assert not target.exists()
