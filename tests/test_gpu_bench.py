"""The GPU benchmark proven on the CPU: tools/gpu-bench.sh's dry run runs every section and its summary reports
each; bench/ops.py's counter counts what a function dispatches."""
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import ops      # noqa: E402 - bench/ops.py
import step     # noqa: E402 - bench/step.py

SECTIONS = ("environment", "peaks", "step-fp32", "step-bf16", "step-fp16", "step-bf16-views-device",
            "original-fp32", "original-bf16", "loader", "augment")
ROW = re.compile(r"^(?P<config>[\w-]+) \(\d+px b\d+\)\s+(?P<amp>none|bf16|fp16)\s+(?P<views>host|device)\s+"
                 r"(?P<img_s>[\d.]+)\s+[\d.]+-[\d.]+\s+(?P<gflop>[\d.]+)", re.M)


def _rows(log):
    """{config: (img/s, GFLOP per image)} of a bench table in a section's log."""
    return {m["config"]: (float(m["img_s"]), float(m["gflop"])) for m in ROW.finditer(log.read_text())}


# The sections CI runs (about 40 s on 2 cores); `DRY_RUN=1 bash tools/gpu-bench.sh` runs them all (~3 min).
CI_SECTIONS = ("environment", "peaks", "step-fp32")


@pytest.mark.slow
def test_the_dry_run_reports_every_section_and_every_config(tmp_path):
    env = dict(os.environ, DRY_RUN="1", OUT=str(tmp_path), PYTHON=sys.executable, SECTIONS=" ".join(CI_SECTIONS))
    subprocess.run(["bash", "tools/gpu-bench.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = tmp_path / "gpu-bench"
    summary = (out / "summary.txt").read_text()
    status = dict(re.findall(r"^== ([\w-]+): (\w+)", summary, re.M))
    has_original = os.path.isfile(os.path.join(ROOT, "bench", "original", "model.py"))
    expected = {name: "ok" if name in CI_SECTIONS else "skipped" for name in SECTIONS}
    expected.update({name: "absent" for name in ("original-fp32", "original-bf16") if not has_original})
    assert {name: status.get(name) for name in SECTIONS} == expected, summary
    assert re.search(r"^== total: \d+s", summary, re.M)

    fp32 = _rows(out / "step-fp32.log")
    assert sorted(fp32) == sorted(step.GPU_CONFIGS)
    assert all(rate > 0 and gflop > 0 for rate, gflop in fp32.values())


def test_the_op_counter_counts_each_dispatched_op_and_tells_views_apart():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    counter = ops.OpCounter()
    with counter.part("work"):
        c = (a + b) * b
        c.t().sum()
    with counter.part("more"):
        a.view(12).add_(1)
    assert counter.counts["work"] == {"add": 1, "mul": 1, "t": 1, "sum": 1}
    assert ops.compute_ops(counter.counts["work"]) == 3             # t is a view
    assert counter.counts["more"] == {"view": 1, "add_": 1}
    assert ops.compute_ops(counter.counts["more"]) == 1


def test_the_launch_counter_counts_outermost_ops_and_leaves_out_views_and_allocations():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    counter = ops.LaunchCounter()
    with counter.part("work"):
        c = (a + b).mean(0)                     # mean dispatches sum and div_ inside it: one launch counted
        torch.empty(3).copy_(c.view(3))
    assert counter.counts["work"] == {"add": 1, "mean": 1, "copy_": 1}


def test_tiny_flags_shrink_every_size_flag_and_swav_crops():
    flags = ["--arch", "resnet50", "--nmb_crops", "2", "6", "--size_crops", "224", "96", "--queue_length", "3840"]
    assert step.tiny(flags) == ["--arch", "resnet18", "--nmb_crops", "2", "6", "--size_crops", "56", "24",
                                "--queue_length", "64"]
    assert step.tiny(["--ndf", "192", "--n_rkhs", "1536", "--n_depth", "8"]) == ["--ndf", "8", "--n_rkhs", "64",
                                                                                 "--n_depth", "1"]
