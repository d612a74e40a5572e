"""bench/port_bench.py on the CPU at a small size, so a GPU call cannot fail on an import or a signature of the 2019
port. The port's code is not part of this repository: these tests run where bench/fetch_port.sh prepared .device/port
(bench/README.md says how) and are skipped elsewhere."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PORT = ROOT / ".device" / "port"
needs_port = pytest.mark.skipif(not (PORT / "models" / "flowplusplus" / "flowplusplus.py").is_file(),
                                reason="the 2019 port is not prepared here (bash bench/fetch_port.sh SOURCE)")


@needs_port
def test_port_bench_smoke(tmp_path):
    out = tmp_path / "port.json"
    proc = subprocess.run([sys.executable, "bench/port_bench.py", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["schema"] == "flowpp-port-bench-v1" and r["complete"] and not r["errors"], r["errors"]
    assert r["port"]["commit"].startswith("4f12a46") and "q = q * key_depth_per_head" in r["port"]["fix"]
    f = r["figures"]
    for key in ("train_images_per_second", "train_step_ms", "peak_memory_gib", "eval_images_per_second",
                "sample_seconds", "forward_gflop_per_image", "profile_kernels_per_step"):
        assert math.isfinite(f[key]) and f[key] > 0, (key, f[key])
    assert f["train_losses_finite"] and 0 <= f["max_reconstruction_error_logit"] < 1
    assert r["config"]["parameters"] > 0 and r["config"]["model"]["in_shape"] == [3, 8, 8]


@needs_port
def test_the_unfixed_port_is_refused(tmp_path):
    broken = tmp_path / "port"
    shutil.copytree(PORT, broken)
    nn_py = broken / "models" / "flowplusplus" / "nn.py"
    nn_py.write_text(nn_py.read_text().replace("q = q * key_depth_per_head ** -0.5", "q *= key_depth_per_head ** -0.5"))
    proc = subprocess.run([sys.executable, "bench/port_bench.py", "--smoke", "--port-dir", str(broken), "--out",
                           str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unfixed port" in proc.stderr and "fetch_port.sh" in proc.stderr, proc.stderr
