"""The fused coupling kernels (flowpp.kernels, notebook 09a) outside the notebook: Triton stays optional; without a GPU,
the kernels still compile for GPU targets and torch.compile still traces their GPU registration; and the kernel
benchmark runs end to end (`bench/kernels.py --smoke`)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
MODULES = sorted(p.stem for p in (ROOT / "flowpp").glob("*.py") if p.stem != "__init__")


def run_python(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_flowpp_imports_and_runs_without_triton():
    "With Triton unimportable, every module imports, the reference path runs, and asking for kernels says what is missing."
    run_python(f"""
import sys
sys.modules["triton"] = None  # `import triton` now raises ImportError, as where it is not installed
import importlib
for name in {MODULES!r}:
    importlib.import_module("flowpp." + name)
import torch
from flowpp.coupling import MixLogisticCoupling
from flowpp.kernels import coupling_forward, use_kernels
c = MixLogisticCoupling(2, 2, 4, 4, components=3, filters=8, blocks=1, heads=2)
y, logdet = c(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4))
assert torch.isfinite(y).all() and logdet.shape == (2,)
for call in (lambda: use_kernels(c), lambda: coupling_forward(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 11, 4, 4), 3)):
    try:
        call()
    except ImportError as e:
        assert "need Triton" in str(e), e
    else:
        raise AssertionError("asking for the kernels without Triton must fail")
assert use_kernels(c, False) == 1 and c.use_kernels is False
""")


def test_only_flowpp_kernels_imports_triton():
    "Importing every other module leaves Triton unimported (it is optional, and only flowpp.kernels asks for it)."
    others = [m for m in MODULES if m != "kernels"]
    run_python(f"""
import importlib, sys
for name in {others!r}:
    importlib.import_module("flowpp." + name)
assert not any(k == "triton" or k.startswith("triton.") for k in sys.modules), sorted(k for k in sys.modules if "triton" in k)
""")


COMPILE_FOR_GPU = """
import subprocess, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
import flowpp.kernels as kernels
from flowpp.coupling import MIN_LOGSCALE

for arch in (80, 90):
    for K in (4, 32):
        KP = triton.next_power_of_2(K)
        const = dict(K=K, KP=KP, BLOCK=kernels.TILE // KP, MIN_LS=MIN_LOGSCALE)
        for fn in (kernels._coupling_forward_kernel, kernels._coupling_backward_kernel, kernels._coupling_inverse_kernel):
            sig = {a: "constexpr" if a in const else "*fp32" if a.endswith("_ptr") else "fp32" if a in ("tol", "noise")
                   else "i32" for a in fn.arg_names}
            compiled = triton.compile(ASTSource(fn, sig, constexprs=const), target=GPUTarget("cuda", arch, 32),
                                      options=dict(num_warps=4))
            path = f"{sys.argv[1]}/{fn.__name__}_{arch}_{K}.ptx"
            open(path, "w").write(compiled.asm["ptx"])
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"  # Triton targets sm_90a on Hopper
            log = subprocess.run([get_ptxas(arch).path, "-v", f"-arch={gpu}", path, "-o", path + ".cubin"],
                                 capture_output=True, text=True, check=True).stderr
            assert "0 bytes spill stores" in log, (fn.__name__, arch, K, log)
            print(fn.__name__, arch, K, [l.strip() for l in log.splitlines() if "registers" in l])
"""


def test_kernels_compile_for_gpu_without_spills(tmp_path):
    "Triton compiles the three kernels to PTX and cubin for A100 (sm_80) and H100/H200 (sm_90) targets, no GPU needed."
    pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in ENV.items() if k != "TRITON_INTERPRET"}  # real JIT functions, not interpreted ones
    proc = subprocess.run([sys.executable, "-c", COMPILE_FOR_GPU, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("registers") == 12, proc.stdout


TRACE_GPU_PATH = """
import torch, triton
from triton.backends.compiler import GPUTarget


class TargetOnly:  # torch's analysis of a kernel's TTIR asks the active driver for a target; no GPU is needed for that
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


triton.runtime.driver.set_active(TargetOnly())
import flowpp.kernels as kernels
from torch._dynamo.backends.common import aot_autograd
assert not kernels._INTERPRETED  # the GPU registration: triton_ops
graphs = {}


def recorder(kind):
    def compile_(gm, example_inputs):
        graphs[kind] = gm
        outs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        vals = [o.meta["val"] if isinstance(o, torch.fx.Node) else o for o in outs]

        def run(args):  # stand-ins shaped like the outputs: the kernels themselves need a GPU to run
            args.clear()
            return [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype) if isinstance(v, torch.Tensor) else v
                    for v in vals]
        run._boxed_call = True
        return run
    return compile_


K = 4
backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"),
                       inference_compiler=recorder("inverse"))
x = torch.randn(2, 3, 4, 4, requires_grad=True)
p = torch.randn(2, 3 * (2 + 3 * K), 4, 4).contiguous(memory_format=torch.channels_last)
p = p.view(2, 3, 2 + 3 * K, 4, 4).requires_grad_()
y, logdet = torch.compile(lambda x, p: torch.ops.flowpp.mixlogistic_coupling(x, p, K), backend=backend, fullgraph=True)(x, p)
(y.sum() + logdet.sum()).backward()
with torch.no_grad():
    torch.compile(lambda y, p: torch.ops.flowpp.mixlogistic_coupling_inverse(y, p, K, 24), backend=backend,
                  fullgraph=True)(y, p)
for kind, gm in sorted(graphs.items()):
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    kernels_called = [n for n in calls if "triton_kernel_wrapper_functional" in str(n.target)]
    assert len(kernels_called) == 1, (kind, [str(n.target) for n in calls])
    assert {str(n.target) for n in calls} <= {"aten.empty_like.default", "triton_kernel_wrapper_functional",
                                             "<built-in function getitem>"}, (kind, [str(n.target) for n in calls])
    print(kind, "clones", sorted(kernels_called[0].kwargs["tensors_to_clone"]))
"""


def test_compile_traces_into_the_triton_ops():
    "The GPU registration (triton_op) under torch.compile: each graph is one Triton kernel call writing only fresh outputs."
    pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in ENV.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", TRACE_GPU_PATH], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # functionalization clones only the outputs the kernel writes (fresh empty_like buffers), never x, p or y
    assert "backward clones ['gp_ptr', 'gx_ptr']" in proc.stdout, proc.stdout
    assert "forward clones ['logdet_ptr', 'y_ptr']" in proc.stdout, proc.stdout
    assert "inverse clones ['logdet_ptr', 'x_ptr']" in proc.stdout, proc.stdout


def test_kernel_bench_smoke_run_writes_every_figure(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "kernels.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "kernels.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    import torch
    import triton
    assert result["schema"] == "flowpp-bench-kernels-v1"
    assert result["device"]["torch"] == torch.__version__ and result["device"]["triton"] == triton.__version__
    assert result["config"]["smoke"] and result["config"]["model"] == "tiny" and result["config"]["compile"]
    assert len(result["config"]["coupling_shapes"]) == 2  # the tiny model's two distinct coupling shapes
    assert [r["layout"] for r in result["results"]] == ["channels_first", "channels_last"]
    for r in result["results"]:
        for variant in ("kernels", "reference", "reference_compiled", "kernels_compiled"):
            for m in ("forward", "forward_backward", "inverse"):
                ms = r["median_ms"][variant][m]
                assert math.isfinite(ms) and ms > 0, (variant, m, ms)
        for variant in ("reference", "reference_compiled", "kernels_compiled"):
            for m, ratio in r["ratios"][f"{variant}_over_kernels"].items():
                assert ratio == pytest.approx(r["median_ms"][variant][m] / r["median_ms"]["kernels"][m])
        acc_k, acc_r = r["accuracy"]["kernels"], r["accuracy"]["reference"]
        for key in ("y", "logdet", "grad_x", "grad_p"):
            assert acc_k[key] <= max(4 * acc_r[key], 1e-5), (key, acc_k[key], acc_r[key])
        assert acc_k["inverse_roundtrip"] <= 2 * acc_r["inverse_roundtrip"] + 1e-5
