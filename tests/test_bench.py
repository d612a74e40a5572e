"""The benchmark runs end to end on the CPU (`bench/run.py --smoke`) and writes every figure."""
import json
import math
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

# figures that are rates, times, sizes or counts: finite and strictly positive
POSITIVE = ["train_images_per_second", "train_step_ms", "train_warmup_seconds", "train_first_step_seconds",
            "peak_memory_bytes", "peak_memory_gib", "eval_images_per_second", "eval_batch_size", "eval_warmup_seconds",
            "sample_seconds", "sample_seconds_min", "sample_images", "forward_gflop_per_image",
            "train_gflop_per_image_counted", "peak_matmul_tflops", "train_tflops", "fraction_of_peak"]
# errors: finite and non-negative
NON_NEGATIVE = ["max_reconstruction_error_logit", "reference_max_reconstruction_error_logit"]
# every figure of the port's, except its compile time (ours is only measured with --compile)
PORT_FIGURES = ["train_images_per_second", "train_images_per_second_best", "peak_memory_gib",
                "eval_images_per_second", "sample_seconds", "max_reconstruction_error_logit", "forward_gflop_per_image"]


def test_bench_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--amp", "--channels-last",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["schema"] == "flowpp-bench-v1"
    assert result["device"]["type"] == "cpu" and result["device"]["name"] and result["device"]["torch"] == torch.__version__
    assert result["config"]["name"] == "tiny" and result["config"]["smoke"] and result["config"]["parameters"] > 0
    assert result["options"]["amp"] and result["options"]["channels_last"] and not result["options"]["compile"]
    f = result["figures"]
    for name in POSITIVE:
        assert isinstance(f[name], (int, float)) and math.isfinite(f[name]) and f[name] > 0, (name, f.get(name))
    for name in NON_NEGATIVE:
        assert math.isfinite(f[name]) and f[name] >= 0, (name, f[name])
    assert f["max_reconstruction_error_logit"] < 1e-2, f["max_reconstruction_error_logit"]
    assert f["decode_encode_exact"] is True and f["decode_encode_mismatched_pixels"] == 0
    assert f["reference_decode_encode_exact"] is True
    assert f["train_losses_finite"] and f["fraction_of_peak"] < 1
    assert "peak resident set size" in f["peak_memory_kind"], "on a CPU the memory figure says what it is"
    eq = f["equivalence"]
    assert eq["passed"] and eq["bpd_rel_diff"] <= 1e-3 and eq["grad_cosine"] > 0.99, eq
    port = result["vs_port"]
    assert port["comparable"] is False and "NOT COMPARABLE" in port["note"]
    assert set(port["ratios"]) == set(PORT_FIGURES), sorted(port["ratios"])
    for r in port["ratios"].values():
        assert math.isfinite(r["ours_over_port"]) and r["ours_over_port"] > 0
