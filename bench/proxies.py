"""Hardware-independent proxies of what the training step and sampling would cost on a GPU, counted on the CPU:
ATen operations and kernel-launching ones per step, host synchronisations (by op), dynamo graphs and graph breaks,
and the compiled step's kernel count; written to JSON and printed as a table beside the 2019 port's figures.

    python3 bench/proxies.py --config cifar10 --batch-size 4 --out bench/results/cpu-proxies-cifar10-b4.json
    python3 bench/proxies.py --config tiny --variants reference,fast,sample,graphs --out /tmp/p.json   # seconds

What is counted, and how (bench/README.md has the table):
- `step`: one call of the trainer's own step, `flowpp.fast.TrainStep` (forward, backward, clipping, fused Adam, EMA,
  statistics), after one warm-up call, under `flowpp.fast.count_dispatch` (a TorchDispatchMode): every ATen op,
  the kernel-launching ones (views, aliases and empty allocations left out), and host syncs by op.
- `loop`: the same over the iterations of `Trainer.train()`'s loop that are not logging steps (the batch drawn, the
  step, the budget check), run by the real Trainer on a small npz copy of the data; the syncs of its last
  iterations and of the end of the run (statistics, checkpoint, evaluation) are left out.
- `compiled`: the step with `compile=True` (inductor, the trainer's compile scope unless `--compiled-scope`): the first call's
  seconds (compilation), inductor's generated kernels (`torch._inductor.metrics.generated_kernel_count`), dynamo's
  graphs and graph breaks (`torch._dynamo.utils.counters`), and one steady step under torch.profiler with inductor's
  C++ kernels marked (TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1, set by this script before torch is imported): per
  step, calls of generated kernels (`*cpp_fused_*` events), extern calls inside compiled graphs (ATen ops with no ATen
  op above them under a compiled region: convolutions, matmuls, attention; allocations and views left out), and
  ATen ops outside the compiled regions (the same rule), plus syncs seen by the profiler. A dispatch mode cannot
  count a compiled step (dynamo runs such frames eagerly), hence the profiler; the same profiler rule applied to
  the eager step is reported beside `count_dispatch`'s figure as a check of the rule.
- `sample`: `FastFlow.sample(n)` under `count_dispatch`.
- `graphs`: `torch._dynamo.explain` of the model's one-sample log-likelihood (the loss's forward) and of `sample`.
"""
from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE", "1")  # read when inductor's config is imported

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import ROOT  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SCHEMA = "flowpp-proxies-v1"
VARIANTS = ("reference", "fast", "compiled", "sample", "graphs")
COMPILED_MARKERS = ("CompiledFunction", "Torch-Compiled Region")  # profiler records around compiled code (forward, backward)
NOOP_IF_CHILDLESS = frozenset({"to", "contiguous", "type_as", "reshape", "expand_as", "view_as", "clone_if_needed"})

# The 2019 PyTorch port, quoted from ../shared/docs/reference.md ("Measured on a CPU, side by side: the 2019 port and
# flowpp (commit d8c8511), CIFAR config, batch 4"), counted there with a TorchDispatchMode after a warm-up step.
PORT_CPU = {
    "source": "shared/docs/reference.md, 'Measured on a CPU, side by side: the 2019 port and flowpp (commit d8c8511), "
              "CIFAR config, batch 4' (the port's column; Adam with foreach=True as on CUDA)",
    "ops_per_step": 25479, "kernel_ops_per_step": 11059, "syncs_per_step_core": 13, "syncs_per_step_with_loop": 14,
    "adam_step_counter_reads": 3314, "sample_4_ops": 20232, "sample_4_kernel_ops": 16301, "sample_4_syncs": 438,
    "dynamo_graphs_loss": 32, "dynamo_graphs_sampling": 43, "cpu_step_seconds_median_of_5": 3.5,
    "peak_rss_gib_training": 5.5,
}


# ----------------------------------------------------------------------------------------------------------
# counting helpers

def step_dispatch(model, fast, x: torch.Tensor, lr: float = 1e-4) -> dict:
    "count_dispatch over one TrainStep call (after a warm-up call), on copies of model; plus the profiler rule as a check."
    from flowpp.fast import TrainStep, count_dispatch
    step = TrainStep(copy.deepcopy(model), fast, ema=copy.deepcopy(model))
    step(x, lr)  # Adam's state, data-dependent branches settled
    counted = count_dispatch(step, x, lr)
    t0 = time.perf_counter()
    step(x, lr)
    counted["step_seconds"] = time.perf_counter() - t0
    counted["profiler_rule"] = profiled_step(lambda: step(x, lr))
    return counted


class TaggedDispatchCounter:
    "A DispatchCounter that also records, for each host sync, the training step it happened in (or 'finish')."

    def __init__(self, trainer):
        from flowpp.fast import NO_KERNEL_OPS, DispatchCounter
        self.trainer, self.phase = trainer, "loop"
        self.per_step_ops, self.sync_log = Counter(), []
        outer = self

        class Counting(DispatchCounter):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                before = sum(self.syncs.values())
                out = super().__torch_dispatch__(func, types, args, kwargs)
                where = outer.phase if outer.phase != "loop" else outer.trainer.step
                name = func.overloadpacket.__name__
                outer.per_step_ops[(where, "kernel" if name not in NO_KERNEL_OPS else "other")] += 1
                if sum(self.syncs.values()) > before:
                    outer.sync_log.append((where, name))
                return out

        self.mode = Counting()


def loop_dispatch(config_name: str, overrides: dict, switches: dict, batch: int, steps: int = 4) -> dict:
    """Host syncs and ops per iteration of Trainer.train()'s loop between logging steps (the real Trainer, on a small npz
    copy of images the config accepts; log_every larger than the run, so no iteration logs)."""
    from flowpp.model import get_config
    from flowpp.train import TrainConfig, Trainer
    config = get_config(config_name, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        for split, n in (("train", max(4 * batch, 16)), ("test", 8)):
            x = benchlib.images_for(config, n, seed=1 if split == "test" else 0).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
            np.savez(Path(tmp) / f"{split}_00.npz", x=x)
        tc = TrainConfig(dataset="npz", data_path=tmp, dataset_options={"num_levels": config.num_levels},
                         model=config_name, model_overrides=overrides, batch_size=batch, init_batch_size=batch,
                         max_steps=steps, log_every=10 * steps, eval_limit=8, num_sample_images=4, progress=False,
                         device="cpu", out_dir=str(Path(tmp) / "run"), **switches)
        trainer = Trainer(tc)
        tagged = TaggedDispatchCounter(trainer)
        finish = trainer._finish

        def tagged_finish(*a, **k):  # the end of the run (statistics, checkpoint, evaluation) is not a loop iteration
            tagged.phase = "finish"
            return finish(*a, **k)

        trainer._finish = tagged_finish
        with tagged.mode:
            trainer.train()
    # an op is tagged with the step counter when it ran; the counter moves inside an iteration, so tag s holds the
    # end of iteration s, the budget check and the batch of the next one, and its step: one whole iteration. Tag 0
    # (the first step, which builds Adam's state) and the last tag (which ends the run) are left out.
    counted = list(range(1, steps))
    syncs = Counter(name for where, name in tagged.sync_log if where in counted)
    kernel_ops = sum(tagged.per_step_ops[(s, "kernel")] for s in counted)
    ops = kernel_ops + sum(tagged.per_step_ops[(s, "other")] for s in counted)
    return {"iterations_counted": len(counted), "ops": ops / len(counted), "kernel_ops": kernel_ops / len(counted),
            "syncs": sum(syncs.values()) / len(counted), "syncs_by_op": {k: v / len(counted) for k, v in syncs.items()},
            "syncs_at_the_end_of_the_run": dict(Counter(name for where, name in tagged.sync_log if where == "finish")),
            "fast_path": dataclasses.asdict(trainer.fast)}


def _under_compiled(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if any(m in p.name for m in COMPILED_MARKERS):
            return True
        p = p.cpu_parent
    return False


def _has_aten_ancestor(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if p.name.startswith("aten::"):
            return True
        p = p.cpu_parent
    return False


def profiled_step(fn) -> dict:
    """One call of fn under torch.profiler (CPU), counted by the rule of this file's docstring: calls of inductor's
    generated kernels, top-level ATen ops (no ATen op above them) inside and outside compiled regions, and syncs."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from flowpp.fast import NO_KERNEL_OPS, SYNC_OPS
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    generated, inside, outside, syncs = Counter(), Counter(), Counter(), Counter()
    for e in prof.events():
        if e.device_type != DeviceType.CPU:
            continue
        if "cpp_fused" in e.name:  # inductor's C++ kernels, named graph_<n>_cpp_fused_<ops>_<k> when profiled
            generated[e.name] += 1
            continue
        if not e.name.startswith("aten::"):
            continue
        op = e.name.removeprefix("aten::")
        if _has_aten_ancestor(e):  # inside another op's CPU implementation (e.g. the fused Adam reading its counters)
            continue
        if op in SYNC_OPS:
            syncs[op] += 1
        if op in NO_KERNEL_OPS:
            continue
        if op in NOOP_IF_CHILDLESS and not any(c.name.startswith("aten::") for c in e.cpu_children):
            continue  # e.g. .to() of a tensor already of that dtype and device: no kernel
        (inside if _under_compiled(e) else outside)[op] += 1
    total = sum(generated.values()) + sum(inside.values()) + sum(outside.values())
    return {"kernels": total, "generated_kernel_calls": sum(generated.values()),
            "distinct_generated_kernels": len(generated), "extern_calls_in_compiled_regions": sum(inside.values()),
            "extern_calls_by_op": dict(inside.most_common(12)), "eager_kernel_ops_outside": sum(outside.values()),
            "eager_ops_outside_by_op": dict(outside.most_common(12)), "syncs": sum(syncs.values()),
            "syncs_by_op": dict(syncs)}


def compiled_step(model, fast, x: torch.Tensor, lr: float = 1e-4) -> dict:
    "The compiled TrainStep: compile seconds, generated kernels, dynamo graphs and breaks, and one profiled steady step."
    import torch._dynamo
    import torch._inductor.metrics as inductor_metrics
    from torch._dynamo.utils import counters
    from flowpp.fast import TrainStep
    torch._dynamo.reset()
    counters.clear()
    inductor_metrics.reset()
    step = TrainStep(copy.deepcopy(model), fast, ema=copy.deepcopy(model))
    t0 = time.perf_counter()
    step(x, lr)
    first = time.perf_counter() - t0
    graphs = {"unique_graphs": counters["stats"]["unique_graphs"], "calls_captured": counters["stats"]["calls_captured"],
              "graph_breaks": sum(counters["graph_break"].values()),
              "graph_break_reasons": {str(k)[:200]: v for k, v in counters["graph_break"].items()}}
    generated = inductor_metrics.generated_kernel_count
    step(x, lr)
    t0 = time.perf_counter()
    step(x, lr)
    steady = time.perf_counter() - t0
    return {"backend": fast.compile_backend, "scope": fast.compile_scope, "first_step_seconds": first,
            "steady_step_seconds": steady, "generated_kernels_compiled": generated, **graphs,
            "per_step": profiled_step(lambda: step(x, lr))}


def sample_dispatch(model, fast, n: int) -> dict:
    from flowpp.fast import FastFlow, count_dispatch
    ff = FastFlow(copy.deepcopy(model), fast)
    ff.sample(n, 1.0, torch.Generator().manual_seed(0))
    counted = count_dispatch(ff.sample, n, 1.0, torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    ff.sample(n, 1.0, torch.Generator().manual_seed(0))
    counted["seconds"] = time.perf_counter() - t0
    return counted


def dynamo_graphs(fn, *args, **kwargs) -> dict:
    "torch._dynamo.explain: how many graphs fn traces into and how many breaks, with the reasons."
    import torch._dynamo
    torch._dynamo.reset()
    t0 = time.perf_counter()
    explained = torch._dynamo.explain(fn)(*args, **kwargs)
    torch._dynamo.reset()
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "ops_in_graphs": explained.op_count,
            "break_reasons": [str(getattr(b, "reason", b))[:200] for b in explained.break_reasons][:10],
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    from flowpp.fast import COMPILE_SCOPES
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="JSON file to write (required unless --table)")
    p.add_argument("--config", default="cifar10")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sample-images", type=int, default=4)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {VARIANTS}")
    p.add_argument("--compiled-config", default=None,
                   help="count the compiled step on this config instead of --config (inductor's compile of the "
                        "cifar10 model takes very long on a small CPU)")
    p.add_argument("--compiled-backend", default="inductor", help="inductor; aot_eager or eager only trace")
    p.add_argument("--compiled-scope", default=None, choices=COMPILE_SCOPES,
                   help="FastPath compile_scope of the compiled step (default: FastPath's)")
    p.add_argument("--loop-steps", type=int, default=4, help="Trainer steps run for the loop count (the first is not counted)")
    p.add_argument("--no-loop", action="store_true", help="skip the Trainer-loop count")
    p.add_argument("--table", nargs="+", metavar="JSON", default=None,
                   help="print the table of a saved run (and of a cold-compile run, second) instead of counting")
    args = p.parse_args(argv)
    if args.out is None and args.table is None:
        p.error("--out is required")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        p.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.table:
        import json
        saved = [json.loads(Path(f).read_text()) for f in args.table]
        print(table(saved[0], saved[1] if len(saved) > 1 else None))
        return saved[0]
    from flowpp.fast import FastPath
    from flowpp.model import FlowPlusPlus
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = FlowPlusPlus.from_config(args.config)
    x = benchlib.images_for(model.config, args.batch_size)
    model.initialize(benchlib.images_for(model.config, max(args.batch_size, 16)))
    fast_eager = FastPath(amp=True, channels_last=True)
    result = {"schema": SCHEMA, "device": benchlib.device_info(device), "config": args.config,
              "parameters": sum(p.numel() for p in model.parameters()), "batch_size": args.batch_size,
              "sample_images": args.sample_images, "variants": {}, "port_2019": PORT_CPU,
              "command": benchlib.command_line()}
    out = result["variants"]

    def save():
        result["peak_rss_gib"] = benchlib.peak_memory(device)["gib"]
        benchlib.write_json(args.out, result)

    for name in args.variants:
        t0 = time.perf_counter()
        if name in ("reference", "fast"):
            fast = FastPath() if name == "reference" else fast_eager
            out[name] = {"fast_path": dataclasses.asdict(fast),
                         "step": step_dispatch(model, fast, x)}
            if not args.no_loop:
                switches = {"reference": True} if name == "reference" else {"amp": True, "channels_last": True}
                out[name]["loop"] = loop_dispatch(args.config, {}, switches, args.batch_size, args.loop_steps)
        elif name == "compiled":
            cfg = args.compiled_config or args.config
            m = model if cfg == args.config else FlowPlusPlus.from_config(cfg)
            if m is not model:
                m.initialize(benchlib.images_for(m.config, max(args.batch_size, 16)))
            scope = {"compile_scope": args.compiled_scope} if args.compiled_scope else {}
            fast = FastPath(amp=True, channels_last=True, compile=True, compile_backend=args.compiled_backend, **scope)
            out[name] = {"config": cfg, "fast_path": dataclasses.asdict(fast), **compiled_step(m, fast, benchlib.images_for(m.config, args.batch_size))}
        elif name == "sample":
            out[name] = {"reference": sample_dispatch(model, FastPath(), args.sample_images),
                         "fast": sample_dispatch(model, fast_eager, args.sample_images)}
        elif name == "graphs":
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
            out[name] = {"log_prob": dynamo_graphs(lambda xb, nb: model.log_prob(xb, noise=nb, check=False), x, noise),
                         "sample": dynamo_graphs(model.sample, args.sample_images)}
        out[name]["seconds"] = time.perf_counter() - t0
        save()
        print(f"{name}: {out[name]['seconds']:.0f} s", flush=True)
    save()
    print(table(result))
    return result


def _get(d: dict, *keys, fmt="{:,.0f}"):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return "-"
        d = d[k]
    return fmt.format(d) if isinstance(d, (int, float)) else str(d)


def table(result: dict, cold: dict | None = None) -> str:
    "The markdown table of bench/README.md from a proxies JSON (and the JSON of a cold compile, when there is one)."
    v, port = result["variants"], result["port_2019"]
    ref, fast, comp, smp, gr = (v.get(k, {}) for k in ("reference", "fast", "compiled", "sample", "graphs"))
    comp_cfg = comp.get("config", result["config"])
    cold_comp = (cold or {}).get("variants", {}).get("compiled", {})
    first = _get(comp, "first_step_seconds", fmt="{:.0f} s") + (
        " (inductor's caches warm)" if cold_comp else "") + (
        f", {_get(cold_comp, 'first_step_seconds', fmt='{:.0f} s')} with the caches disabled" if cold_comp else "")
    head = (f"| {result['config']}, batch {result['batch_size']}, CPU | 2019 port (quoted) | flowpp eager fp32 | "
            f"flowpp amp + channels_last | flowpp amp + channels_last + compile ({comp.get('backend', '-')}, "
            f"{comp.get('scope', '-')} scope"
            f"{'' if comp_cfg == result['config'] else f', `{comp_cfg}` config'}) |")
    rows = [head, "|---|---:|---:|---:|---:|",
            f"| ATen ops per training step | {port['ops_per_step']:,} | {_get(ref, 'step', 'ops')} | {_get(fast, 'step', 'ops')} | - |",
            f"| kernel ops per training step (count_dispatch) | {port['kernel_ops_per_step']:,} | "
            f"{_get(ref, 'step', 'kernel_ops')} | {_get(fast, 'step', 'kernel_ops')} | - |",
            f"| kernels per training step (profiler rule) | - | {_get(ref, 'step', 'profiler_rule', 'kernels')} | "
            f"{_get(fast, 'step', 'profiler_rule', 'kernels')} | **{_get(comp, 'per_step', 'kernels')}** = "
            f"{_get(comp, 'per_step', 'generated_kernel_calls')} generated + "
            f"{_get(comp, 'per_step', 'extern_calls_in_compiled_regions')} extern + "
            f"{_get(comp, 'per_step', 'eager_kernel_ops_outside')} eager |",
            f"| host syncs per step: the step / a loop iteration between logging steps | "
            f"{port['syncs_per_step_core']} / {port['syncs_per_step_with_loop']} | "
            f"{_get(ref, 'step', 'syncs')} / {_get(ref, 'loop', 'syncs', fmt='{:g}')} | "
            f"{_get(fast, 'step', 'syncs')} / {_get(fast, 'loop', 'syncs', fmt='{:g}')} | "
            f"{_get(comp, 'per_step', 'syncs')} / - (profiler) |",
            f"| dynamo graphs (graph breaks): the loss's forward / sampling | {port['dynamo_graphs_loss']} / "
            f"{port['dynamo_graphs_sampling']} | {_get(gr, 'log_prob', 'graphs')} ({_get(gr, 'log_prob', 'graph_breaks')}) / "
            f"{_get(gr, 'sample', 'graphs')} ({_get(gr, 'sample', 'graph_breaks')}) | - | "
            f"{_get(comp, 'unique_graphs')} graphs ({_get(comp, 'graph_breaks')} breaks) for the step's compiled regions |",
            f"| compiled step: kernels inductor generated / first step (compilation) | - | - | - | "
            f"{_get(comp, 'generated_kernels_compiled')} / {first} |",
            f"| sampling {result['sample_images']} images: ops (kernel ops) | {port['sample_4_ops']:,} "
            f"({port['sample_4_kernel_ops']:,}) | {_get(smp, 'reference', 'ops')} ({_get(smp, 'reference', 'kernel_ops')}) | "
            f"{_get(smp, 'fast', 'ops')} ({_get(smp, 'fast', 'kernel_ops')}) | - |",
            f"| sampling {result['sample_images']} images: host syncs | {port['sample_4_syncs']} | "
            f"{_get(smp, 'reference', 'syncs')} | {_get(smp, 'fast', 'syncs')} | - |"]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
