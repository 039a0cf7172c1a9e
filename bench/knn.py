"""Weighted kNN top-1 (knn.knn_top1, k=200, T=0.07, default chunking) on random float32 features, on the CPU
with torch's default thread count.

Each case runs in a fresh child process so its peak RSS is its own. Prints a table: case, memory N x D,
queries, query chunk, median seconds of knn_top1 over the runs, min-max, queries/s, the RSS once the inputs
exist, and the peak RSS.

    .venv/bin/python bench/knn.py [--runs 3] [--case imagenet-scale cifar10-mini]
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

# name: (memory rows N, feature dim D, queries Q, classes)
CASES = {
    "cifar10-mini": (5_000, 512, 1_000, 10),
    "imagenet-scale": (50_000, 2048, 10_000, 100),
}


def rss_mb():
    """This process's current resident set size in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_case(name, runs):
    """Time knn_top1 on one case in this process; returns the row as a dict."""
    import torch

    import knn
    n, dim, n_queries, n_classes = CASES[name]
    g = torch.Generator().manual_seed(0)
    memory, queries = torch.randn(n, dim, generator=g), torch.randn(n_queries, dim, generator=g)
    memory_labels = torch.randint(0, n_classes, (n,), generator=g)
    query_labels = torch.randint(0, n_classes, (n_queries,), generator=g)
    inputs_rss = rss_mb()
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        knn.knn_top1(memory, memory_labels, queries, query_labels, n_classes)
        seconds.append(time.perf_counter() - t0)
    return {"case": name, "shape": f"{n} x {dim}", "queries": n_queries, "chunk": knn.default_chunk_size(n),
            "threads": torch.get_num_threads(), "seconds": seconds, "inputs_rss": inputs_rss,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.runs)))
        return
    rows = []
    for name in args.case:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, "--runs", str(args.runs)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.splitlines()[-1]))
    print(f"torch threads: {rows[0]['threads']}; k=200, T=0.07; {args.runs} runs per case")
    print(f"{'case':<15} {'memory N x D':>13} {'queries':>8} {'chunk':>6} {'median s':>9} {'min-max s':>13} "
          f"{'queries/s':>10} {'inputs RSS MB':>14} {'peak RSS MB':>12}")
    for r in rows:
        s = r["seconds"]
        median = statistics.median(s)
        print(f"{r['case']:<15} {r['shape']:>13} {r['queries']:>8} {r['chunk']:>6} {median:9.2f} "
              f"{min(s):6.2f}-{max(s):<6.2f} {r['queries'] / median:10.0f} {r['inputs_rss']:14.0f} "
              f"{r['peak_rss']:12.0f}")


if __name__ == "__main__":
    main()
