"""Small pieces every entry point shares: user-facing errors, shutting down quietly (signals, DataLoader
workers), a lock file that waits its turn, seeding."""
import contextlib
import fcntl
import os
import random
import signal
import sys
import threading

import numpy as np
import torch


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing data, unreadable file).

    Entry points print `error: <message>` on one line to stderr and exit with status 2, without a traceback.
    The message must name the problem and the fix.
    """


def run_main(main):
    """Call main(); a UserError becomes one line on stderr and exit status 2. Once main() has ended, however it
    ended, the process is shutting down and ignores Ctrl-C (see ignore_interrupts)."""
    try:
        return main()
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        ignore_interrupts()


def ignore_interrupts():
    """From now on Ctrl-C does nothing and SIGTERM ends the process without running Python code.

    The shutdown that follows (atexit handlers, joining threads) would otherwise meet distributed.StopRequest's
    handler, which raises KeyboardInterrupt on a second signal, and print "Exception ignored in atexit callback".
    The checkpoint is saved by then; letting the shutdown finish loses nothing.
    """
    if threading.current_thread() is threading.main_thread():    # signal.signal works there only
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def user_message(error):
    """The one-line message of a UserError, also when a DataLoader worker raised it: the loader re-raises it
    with the worker's traceback in front, and the original message is its last line."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def ignore_stop_signals(_worker_id=None):
    """DataLoader worker_init_fn: leave Ctrl-C/SIGTERM to the training process, which stops cleanly.

    Ctrl-C and torchrun's SIGTERM reach the whole process group; a worker that died of them would fail the
    batch the training process still needs to finish its update. See reap_children_at_exit for the other side.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def reap_children_at_exit():
    """Kill this process's remaining DataLoader workers when it exits.

    They ignore SIGTERM, which multiprocessing's own exit handler uses, so an exit with a live iterator (an
    exception, a user error) would otherwise wait on them forever. atexit runs handlers last-in first-out, so
    this one runs before multiprocessing's. (A process multiprocessing started runs no atexit handlers: see
    distributed._spawned_rank.)
    """
    import atexit
    atexit.register(kill_children)


def kill_children():
    """SIGKILL this process's remaining multiprocessing children (DataLoader workers) and reap them; only for a
    process that is ending."""
    import multiprocessing
    children = multiprocessing.active_children()
    if children and threading.current_thread() is threading.main_thread():
        # The DataLoader's SIGCHLD handler would report these deaths as a failure of the run.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join()


@contextlib.contextmanager
def waiting_lock(folder, name, on_wait=None):
    """Hold an exclusive flock on <folder>/<name> (the folder and the file created if needed), waiting for it
    however long another process holds it (no timeout), after calling on_wait() once if it must. Yields True
    once held (also on a filesystem without locks, where it goes on unlocked), False where the lock file
    cannot be made (the folder is not writable). The kernel drops the flock of a holder that dies, so a killed
    process never blocks the next one."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield True
    finally:
        os.close(fd)


def seed_everything(seed):
    """Seed python, numpy and torch (all devices) so a run's randomness follows from --seed."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def stream_seed(*keys):
    """A 64-bit seed that mixes non-negative integers (run seed, rank, update, ...) with splitmix64, so that
    nearby keys give unrelated random streams."""
    h = 0
    for key in keys:
        h = (h ^ int(key)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


_MASK64 = 2 ** 64 - 1


def reseed(seed, device=None):
    """Seed python, numpy, torch's CPU generator and (a CUDA `device`) that device's generator.

    Training re-seeds at every update and every image from stream_seed(...) keys, so its random stream depends
    only on where it is in training, never on where a run was stopped and resumed. (torch.manual_seed would
    also do this but is too slow to call per image.)"""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.default_generator.manual_seed(seed)
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
