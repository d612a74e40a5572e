"""What compiling the training step costs, for each compile scope of `flowpp.fast.FastPath`: the graphs dynamo
traces, the size of the forward and backward graphs inductor has to lower, and, with a real backend, the first
step's seconds (the compilation), the kernels inductor generated and the steady step time.

    python3 bench/compile_cost.py --scopes block,step,regional --out bench/results/cpu-compile-cost-cifar10-b2.json
    python3 bench/compile_cost.py --scopes block,step --backend none --out /tmp/c.json       # graph sizes only, seconds
    python3 bench/compile_cost.py --smoke --out /tmp/c.json                                  # tiny, graph sizes, seconds

Each scope runs in a fresh Python process (`--child`) with empty inductor and Triton cache folders of its own
(TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR), so nothing compiled for one scope or by an earlier run is found: the
first step pays the whole compilation, as on a fresh machine. `--cache-dir DIR` keeps those folders (DIR/SCOPE/inductor,
DIR/SCOPE/triton, emptied first) for later runs of the same step to start warm; `--warm-caches` uses the caches the
environment names instead. Two passes per scope, each on a fresh copy of one initialised model:
- `trace`: the first `TrainStep` call with a counting backend (dynamo + AOT autograd, as inductor receives the
  graphs, but nothing lowered): dynamo's graphs and graph breaks, and the `call_function` nodes of
  every forward and backward graph (`fx_nodes_forward`, `fx_nodes_backward`). Inductor lowers, schedules and
  generates code for each of those nodes, so their sum is a device-independent measure of its work.
- `compile` (unless `--backend none`): the same call with the real backend (the trainer's fast path minus the CUDA
  graph): its seconds, inductor's generated kernels (`torch._inductor.metrics.generated_kernel_count`), the phases
  of `torch._dynamo.utils.compile_times()` that took longest, then the median of `--steady-steps` steps.
The JSON (schema `flowpp-compile-cost-v1`) is rewritten after each scope, so a run stopped by a time limit keeps
the scopes it finished; a scope that runs past `--scope-timeout` is recorded as such.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import ROOT  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import torch  # noqa: E402

SCHEMA = "flowpp-compile-cost-v1"
COUNTING_BACKEND = "flowpp_counting"
TOP_PHASES = 12  # rows of compile_times() kept per scope


def register_counting_backend(nodes: dict) -> None:
    "A dynamo backend that runs AOT autograd and records the call_function nodes of each forward and backward graph."
    from functorch.compile import make_boxed_func
    from torch._dynamo import register_backend
    from torch._functorch.aot_autograd import aot_module_simplified

    def count(kind):
        def compiler(gm, example_inputs):
            nodes[kind].append(sum(n.op == "call_function" for n in gm.graph.nodes))
            return make_boxed_func(gm)
        return compiler

    @register_backend(name=COUNTING_BACKEND)
    def counting(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=count("forward"), bw_compiler=count("backward"))


def dynamo_counts() -> dict:
    from torch._dynamo.utils import counters
    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}


def first_step(model, fast, x, device) -> tuple:
    "A TrainStep on a copy of model, its first call timed (synchronised): (step, seconds)."
    from flowpp.fast import TrainStep
    step = TrainStep(copy.deepcopy(model), fast, ema=copy.deepcopy(model))
    return step, benchlib.time_once(lambda: step(x, 1e-4), device)


def child(args) -> dict:
    "One scope, both passes, in this process."
    import torch._dynamo
    from torch._dynamo.utils import counters
    from flowpp.fast import FastPath
    from flowpp.model import FlowPlusPlus
    device = benchlib.pick_device(args.device)
    torch.manual_seed(0)
    model = FlowPlusPlus.from_config(args.config).to(device)
    x = benchlib.images_for(model.config, args.batch_size).to(device)
    model.initialize(benchlib.images_for(model.config, max(args.batch_size, 16)).to(device))
    switches = dict(amp=True, channels_last=True, compile=True, compile_scope=args.child)
    out = {"scope": args.child, "fast_path": switches}

    nodes = {"forward": [], "backward": []}
    register_counting_backend(nodes)
    counters.clear()
    _, seconds = first_step(model, FastPath(**switches, compile_backend=COUNTING_BACKEND), x, device)
    out["trace"] = {**dynamo_counts(), "fx_nodes_forward": sum(nodes["forward"]),
                    "fx_nodes_backward": sum(nodes["backward"]), "forward_graph_nodes": nodes["forward"],
                    "seconds": seconds}
    torch._dynamo.reset()
    if args.backend == "none":
        return out

    import torch._inductor.metrics as inductor_metrics
    counters.clear()
    inductor_metrics.reset()
    torch._dynamo.utils.compilation_time_metrics.clear()
    step, seconds = first_step(model, FastPath(**switches, compile_backend=args.backend), x, device)
    phases = {name: sum(times) for name, times in torch._dynamo.utils.compilation_time_metrics.items()}
    steady = [benchlib.time_once(lambda: step(x, 1e-4), device) for _ in range(args.steady_steps)]
    out["compile"] = {"backend": args.backend, "first_step_seconds": seconds, **dynamo_counts(),
                      "generated_kernels": inductor_metrics.generated_kernel_count,
                      "steady_step_seconds": statistics.median(steady),
                      "slowest_phases_seconds": dict(sorted(phases.items(), key=lambda kv: -kv[1])[:TOP_PHASES])}
    return out


def run_scope(args, scope: str) -> dict:
    "One scope in a fresh process with empty compile caches of its own; its result, or why there is none."
    cmd = [sys.executable, __file__, "--child", scope, "--config", args.config, "--batch-size", str(args.batch_size),
           "--backend", args.backend, "--device", args.device, "--steady-steps", str(args.steady_steps)]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not args.warm_caches:
            caches = Path(args.cache_dir or tmp) / scope
            shutil.rmtree(caches, ignore_errors=True)  # cold: nothing an earlier run compiled is found
            env.update(TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"), TRITON_CACHE_DIR=str(caches / "triton"))
        result_file = Path(tmp) / "scope.json"
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd + ["--out", str(result_file)], env=env, timeout=args.scope_timeout)
        except subprocess.TimeoutExpired:
            return {"scope": scope, "error": f"ran past --scope-timeout ({args.scope_timeout} s)",
                    "seconds": time.perf_counter() - t0}
        if done.returncode != 0 or not result_file.exists():
            return {"scope": scope, "error": f"exit status {done.returncode}", "seconds": time.perf_counter() - t0}
        return {**json.loads(result_file.read_text()), "seconds": time.perf_counter() - t0}


def table(result: dict) -> str:
    "Markdown rows: one per scope."
    rows = ["| scope | graphs (breaks) | forward / backward FX nodes | first step s (compilation) | kernels generated | steady step s |",
            "|---|---:|---:|---:|---:|---:|"]
    for scope, r in result["scopes"].items():
        if "error" in r:
            rows.append(f"| {scope} | {r['error']} | | | | |")
            continue
        t, c = r["trace"], r.get("compile", {})
        fmt = lambda v, f="{:,.0f}": "-" if v is None else f.format(v)
        rows.append(f"| {scope} | {t['graphs']} ({t['graph_breaks']}) | {t['fx_nodes_forward']:,} / {t['fx_nodes_backward']:,} | "
                    f"{fmt(c.get('first_step_seconds'), '{:.1f}')} | {fmt(c.get('generated_kernels'))} | "
                    f"{fmt(c.get('steady_step_seconds'), '{:.2f}')} |")
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="JSON file to write (required unless --table)")
    p.add_argument("--scopes", default="block,step", help="comma-separated FastPath compile scopes, run in this order")
    p.add_argument("--config", default=None, help="model config (default cifar10; tiny with --smoke)")
    p.add_argument("--batch-size", type=int, default=None, help="default 2 (4 with --smoke)")
    p.add_argument("--backend", default=None, help="inductor (default), or none: graph sizes only (default with --smoke)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--steady-steps", type=int, default=3)
    p.add_argument("--scope-timeout", type=float, default=7200, help="seconds one scope may take")
    p.add_argument("--cache-dir", default=None, help="keep each scope's fresh compile caches in DIR/SCOPE for later runs")
    p.add_argument("--warm-caches", action="store_true", help="use the caches the environment names (not cold)")
    p.add_argument("--smoke", action="store_true", help="the tiny config: checks the script in seconds")
    p.add_argument("--table", metavar="JSON", default=None, help="print the table of a saved run")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.config = args.config or ("tiny" if args.smoke else "cifar10")
    args.batch_size = args.batch_size or (4 if args.smoke else 2)
    args.backend = args.backend or ("none" if args.smoke else "inductor")
    if args.out is None and args.table is None:
        p.error("--out is required")
    from flowpp.fast import COMPILE_SCOPES
    args.scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    if unknown := [s for s in args.scopes + ([args.child] if args.child else []) if s not in COMPILE_SCOPES]:
        p.error(f"unknown scopes {unknown}; choose from {COMPILE_SCOPES}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print(table(result))
        return result
    if args.child:
        out = child(args)
        benchlib.write_json(args.out, out)
        return out
    device = benchlib.pick_device(args.device)
    result = {"schema": SCHEMA, "device": benchlib.device_info(device), "config": args.config,
              "batch_size": args.batch_size, "backend": args.backend, "caches": "warm" if args.warm_caches else "cold",
              "scopes": {}, "command": benchlib.command_line()}
    result["cache_dir"] = args.cache_dir
    for scope in args.scopes:
        result["scopes"][scope] = run_scope(args, scope)
        benchlib.write_json(args.out, result)
        print(f"{scope}: {result['scopes'][scope]['seconds']:.0f} s", flush=True)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
