"""What every bench table is printed with: the host's CPU model, torch's threads and this machine's measured
float32 matrix-multiply rate, so that the table's speeds read as ratios measured in the same run."""
import os
import platform
import statistics
import time


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux, else platform's), and how many cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def matmul_gflops(n=4096, repeats=5):
    """This machine's float32 matrix-multiply rate at torch's current thread count (median of repeats), GFLOP/s."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def header():
    """One line for the top of a table: CPU, torch, threads, and the float32 matmul rate; returns (line, rate)."""
    import torch
    rate = matmul_gflops()
    line = (f"host: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"float32 matmul (4096^3): {rate:.1f} GFLOP/s")
    return line, rate
