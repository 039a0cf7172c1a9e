"""Time SwAV's pure pieces against the seed's way: costs.sinkhorn (log domain) next to the seed's scaling loop
(main_swav.py's order, float32, no max subtraction), and a larc.LARC step next to a plain SGD step over
ResNet-50's parameters (each step also copies the gradients in, the same for both). One process, no
collectives.

Prints one table: median milliseconds over --repeats calls after warm-up (CUDA: synchronised).

    .venv/bin/python bench/swav_costs.py                      # CUDA if there is one, else CPU
    .venv/bin/python bench/swav_costs.py --device cpu --repeats 5
"""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import host     # bench/host.py: the CPU model and matmul rate every table prints
import costs    # noqa: E402
import larc     # noqa: E402

# (rows, prototypes): the seed's 64 per GPU; 256 images on one device; 256 with a 3840-row queue.
SINKHORN_SIZES = ((64, 3000), (256, 3000), (4096, 3000))


def seed_sinkhorn(scores, epsilon, n_iters):
    """The seed's order in scaling form, one process: Q = exp(scores / epsilon) with nothing subtracted."""
    q = torch.exp(scores / epsilon).t()
    k, b = q.shape
    q /= q.sum()
    for _ in range(n_iters):
        q /= q.sum(1, keepdim=True)
        q /= k
        q /= q.sum(0, keepdim=True)
        q /= b
    return (q * b).t()


def median_ms(fn, device, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def optimizer_step(make, params, grads):
    optimizer = make(params)

    def step():
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    line, _ = host.header()
    print(line)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"{'what':<44} {'size':>12} {'ms (median)':>12}")
    for rows, k in SINKHORN_SIZES:
        scores = torch.nn.functional.normalize(torch.randn(rows, 128, device=device), dim=1) @ \
            torch.nn.functional.normalize(torch.randn(128, k, device=device), dim=0)
        for name, fn in (("costs.sinkhorn eps 0.05, 3 iterations", costs.sinkhorn),
                         ("seed's scaling loop eps 0.05, 3 iterations", seed_sinkhorn)):
            ms = median_ms(lambda: fn(scores, 0.05, 3), device, args.repeats)
            print(f"{name:<44} {f'{rows}x{k}':>12} {ms:>12.3f}")
    import torchvision
    params = [p.detach().to(device).requires_grad_() for p in torchvision.models.resnet50().parameters()]
    grads = [torch.randn_like(p) for p in params]
    for name, make in (("SGD step, momentum 0.9, wd 1e-6",
                        lambda ps: torch.optim.SGD(ps, lr=0.6, momentum=0.9, weight_decay=1e-6)),
                       ("LARC step, momentum 0.9, wd 1e-6", lambda ps: larc.LARC(ps, lr=0.6, weight_decay=1e-6))):
        ms = median_ms(optimizer_step(make, params, grads), device, args.repeats)
        print(f"{name:<44} {f'{len(params)} tensors':>12} {ms:>12.3f}")


if __name__ == "__main__":
    main()
