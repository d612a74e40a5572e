"""bench/compile_cost.py on the `tiny` config: each scope in a process of its own with cache folders of its own, no
graph break, the block scope hands inductor fewer nodes than the per-step scope, and the compile pass (here the
aot_eager backend, which traces without generating kernels) records its first step and the steady step."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args, check=True):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "compile_cost.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, check=check)


def test_block_scope_traces_less_than_step_scope(tmp_path):
    out = tmp_path / "cost.json"
    done = run("--smoke", "--scopes", "block,step", "--backend", "aot_eager", "--cache-dir", str(tmp_path / "caches"),
               "--out", str(out))
    result = json.loads(out.read_text())
    assert result["schema"] == "flowpp-compile-cost-v1" and result["config"] == "tiny" and result["backend"] == "aot_eager"
    block, step = result["scopes"]["block"], result["scopes"]["step"]
    for r in (block, step):
        assert "error" not in r, r
        assert r["trace"]["graph_breaks"] == 0 and r["trace"]["fx_nodes_backward"] > 0, r
        assert len(r["trace"]["forward_graph_nodes"]) == r["trace"]["graphs"], r
        c = r["compile"]
        assert c["backend"] == "aot_eager" and c["graphs"] == r["trace"]["graphs"] and c["graph_breaks"] == 0, c
        assert c["first_step_seconds"] > 0 and c["steady_step_seconds"] > 0 and c["slowest_phases_seconds"], c
        assert (tmp_path / "caches" / r["scope"]).is_dir(), "each scope's caches are kept under --cache-dir"
    assert block["fast_path"]["compile_scope"] == "block" and step["fast_path"]["compile_scope"] == "step"
    # smaller graphs, more of them: each repeated unit once per shape
    assert block["trace"]["graphs"] > step["trace"]["graphs"]
    assert block["trace"]["fx_nodes_forward"] < step["trace"]["fx_nodes_forward"] / 2, (block["trace"], step["trace"])
    assert "| block |" in done.stdout and "| step |" in done.stdout
    assert "| block |" in run("--table", str(out)).stdout
    sizes = tmp_path / "sizes.json"
    run("--smoke", "--scopes", "block", "--out", str(sizes))
    assert "compile" not in json.loads(sizes.read_text())["scopes"]["block"], "--smoke alone measures graph sizes only"


def test_unknown_scope_is_refused(tmp_path):
    done = run("--smoke", "--scopes", "block,layers", "--out", str(tmp_path / "x.json"), check=False)
    assert done.returncode == 2 and "unknown scopes ['layers']" in done.stderr
