"""Benchmark Flow++ along one fast path: the trainer's own training step (`flowpp.fast.TrainStep`), evaluation and
sampling (`FastFlow`), exactness and equivalence; every figure goes to one JSON file, rewritten after each phase.

    python3 bench/run.py --path fastest --out bench/results/NAME.json            # a GPU: the trainer's default GPU step
    python3 bench/run.py --path reference --out bench/results/NAME.json          # the float32 eager reference
    python3 bench/run.py --path fastest --no-cuda-graph --out ...                # any switch can be overridden
    python3 bench/run.py --smoke --out /tmp/smoke.json                           # the `tiny` config on the CPU, seconds

See bench/README.md for what each figure means and how it is measured.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, next to this file
import benchlib  # noqa: E402
from benchlib import ROOT  # noqa: E402

if str(ROOT) not in sys.path:  # flowpp from this checkout, also where it is not installed (the bare GPU machine)
    sys.path.insert(1, str(ROOT))

import torch  # noqa: E402

SCHEMA = "flowpp-bench-v2"
PATHS = ("reference", "fastest", "default")
# the phases in the order they run; each one's figures are written as soon as it ends, so a run stopped by a time
# limit keeps what it measured (the compile-heavy phases come last)
PHASES = ("train", "sample", "flops", "profile", "eval", "reconstruction", "equivalence")
SWITCHES = ("amp", "amp_inverse", "channels_last", "compile", "cuda_graph", "tf32", "kernels")

# The 2019 PyTorch port on one H100 (torch 2.11), CIFAR config, batch 64, quoted from ../shared/docs/reference.md,
# "Measured on one H100". The port measured on the same card in the same call (bench/port_bench.py) is the
# comparison that counts; these are for reading a run on another machine against the published figures.
PORT_H100 = {
    "source": "shared/docs/reference.md, 'Measured on one H100' (the 2019 PyTorch port, torch 2.11, CIFAR config, batch 64)",
    "device": "NVIDIA H100",
    "figures": {
        "train_images_per_second": {"value": 128.0, "better": "higher", "note": "fp32 as shipped"},
        "train_images_per_second_best": {"value": 150.0, "better": "higher", "note": "torch.compile + bf16 autocast",
                                         "ours": "train_images_per_second"},
        "peak_memory_gib": {"value": 51.4, "better": "lower", "note": "peak GPU memory while training"},
        "eval_images_per_second": {"value": 800.0, "better": "higher", "note": "likelihood evaluation at batch 256"},
        "sample_seconds": {"value": 0.30, "better": "lower", "note": "64 images, 100-step bisection"},
        "max_reconstruction_error_logit": {"value": 7.2e-3, "better": "lower", "note": "max inverse error, logit space, float32"},
        "forward_gflop_per_image": {"value": 25.1, "better": "lower", "note": "the port's model differs (28.8 M parameters, factor-out)"},
    },
}


# ----------------------------------------------------------------------------------------------------------
# options

def parse_args(argv=None) -> argparse.Namespace:
    from flowpp.fast import COMPILE_SCOPES
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write (rewritten after each phase)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU smoke run: the tiny config, batch 8, few iterations (unless given explicitly)")
    p.add_argument("--config", default=None, help="model config name (default: cifar10; tiny with --smoke)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="override a model config field")
    p.add_argument("--checkpoint", default=None, help="benchmark the EMA weights of a flowpp checkpoint instead of a fresh init")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 64; 8 with --smoke)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="evaluation batch (default 256; 32 with --smoke)")
    p.add_argument("--init-batch-size", type=int, default=64, help="images for the data-dependent init")
    p.add_argument("--warmup-iters", type=int, default=None,
                   help="untimed training steps first (default: the CUDA-graph warm-up + capture + 1 = 5; 2 with --smoke)")
    p.add_argument("--train-iters", type=int, default=None, help="timed training steps (default 20; 3 with --smoke)")
    p.add_argument("--eval-iters", type=int, default=None, help="timed evaluation batches (default 5; 2 with --smoke)")
    p.add_argument("--sample-images", type=int, default=64)
    p.add_argument("--sample-repeats", type=int, default=None, help="timed sampling runs (default 3; 2 with --smoke)")
    p.add_argument("--profile-steps", type=int, default=1, help="steady-state training steps under torch.profiler")
    p.add_argument("--matmul-size", type=int, default=None, help="peak matmul size (default 8192 on a GPU, 512 on a CPU)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {PHASES} (run in that order)")
    p.add_argument("--label", default=None, help="a name for this run in the JSON (default: from the path and switches)")
    fast = p.add_argument_group("fast path (flowpp.fast.FastPath): --path, then any switch overrides it")
    fast.add_argument("--path", default="reference", choices=PATHS,
                      help="reference: FastPath(), the float32 eager step; fastest: FastPath.fastest(), the trainer's "
                           "default on a GPU; default: FastPath.default_for(device)")
    for name, text in (("amp", "bfloat16 autocast of the conditioner networks (log_prob, loss)"),
                       ("amp-inverse", "bfloat16 conditioners in encode/decode/sample too (decode(encode(x)) == x is lost)"),
                       ("channels-last", "NHWC memory layout"), ("compile", "torch.compile the regions of --compile-scope"),
                       ("cuda-graph", "capture the whole training step as one CUDA graph (CUDA only)"),
                       ("tf32", "TF32 in the conditioners' convolutions and matmuls"),
                       ("kernels", "the fused Triton kernels of the mixture coupling (flowpp.kernels)")):
        fast.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=text)
    fast.add_argument("--compile-scope", default=None, choices=list(COMPILE_SCOPES))
    fast.add_argument("--compile-mode", default=None, choices=["default", "max-autotune-no-cudagraphs"])
    fast.add_argument("--compile-backend", default=None, help="inductor, or aot_eager / eager (trace only: CPU tests)")
    args = p.parse_args(argv)
    small = args.smoke
    defaults = dict(config="tiny" if small else "cifar10", batch_size=8 if small else 64,
                    eval_batch_size=32 if small else 256, warmup_iters=2 if small else None,
                    train_iters=3 if small else 20, eval_iters=2 if small else 5, sample_repeats=2 if small else 3)
    return benchlib.settle_args(p, args, defaults, PHASES)


def fast_path_from(args, device: torch.device):
    "The FastPath of --path with the switches given."
    from flowpp.fast import FastPath
    base = {"reference": FastPath(), "fastest": FastPath.fastest(), "default": FastPath.default_for(device)}[args.path]
    changes = {name: getattr(args, name) for name in SWITCHES if getattr(args, name) is not None}
    for name in ("compile_scope", "compile_mode", "compile_backend"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    fast = dataclasses.replace(base, **changes)
    fast.check_device(device)
    return fast


def label_of(args, fast) -> str:
    "'fastest', 'fastest - cuda_graph', 'reference + amp + channels_last', ... from the path and what was changed."
    from flowpp.fast import FastPath
    base = {"reference": FastPath(), "fastest": FastPath.fastest(), "default": FastPath.default_for(fast_device(args))}[args.path]
    parts = [args.path]
    for f in dataclasses.fields(fast):
        a, b = getattr(base, f.name), getattr(fast, f.name)
        if a != b:
            parts.append(f"+ {f.name}" if b is True else f"- {f.name}" if b is False else f"{f.name}={b}")
    return " ".join(parts)


def fast_device(args) -> torch.device:
    return benchlib.pick_device(args.device)


# ----------------------------------------------------------------------------------------------------------
# data

def real_images(config, n: int, seed: int) -> tuple[torch.Tensor, str]:
    "n uint8 images for the config: CIFAR-10 test images (fixture) or digits where the shape fits, else random."
    shape, levels = tuple(config.image_shape), config.num_levels
    if shape == (3, 32, 32) and levels == 256:
        x, source = benchlib.cifar10_fixture(), "CIFAR-10 test images 0-63 (nbs/fixtures/cifar10_test_64.npz)"
    elif shape == (1, 8, 8) and levels == 17:
        from flowpp.data import load_digits
        x, source = load_digits("test").images, "scikit-learn digits, test split"
    else:
        g = torch.Generator().manual_seed(seed)
        x, source = torch.randint(0, levels, (n, *shape), generator=g, dtype=torch.uint8), f"random uint8 in [0, {levels})"
    if n > len(x):
        source += f", tiled {math.ceil(n / len(x))}x"
    return benchlib.tile(x, n), source


def compare_with_port(figures: dict, device: dict, config_name: str, batch_size: int) -> dict:
    "Our figures over the port's published H100 figures; marked comparable only for the cifar10 config at batch 64 on an H100."
    comparable = device["type"] == "cuda" and "H100" in device["name"] and config_name == "cifar10" and batch_size == 64
    ratios = {}
    for name, port in PORT_H100["figures"].items():
        ours = figures.get(port.get("ours", name))
        if isinstance(ours, (int, float)) and ours > 0:
            ratios[name] = {"ours": ours, "port": port["value"], "ours_over_port": ours / port["value"],
                            "better": port["better"], "note": port["note"]}
    out = {"port": PORT_H100, "comparable": comparable, "ratios": ratios}
    if not comparable:
        out["note"] = (f"NOT COMPARABLE: measured on {device['name']} ({device['type']}), config {config_name}, batch "
                       f"{batch_size}; the port's published figures are from an H100 with the cifar10 config at batch 64. "
                       "Compare with the port measured on the same card (bench/port_bench.py, bench/table.py --port).")
    return out


# ----------------------------------------------------------------------------------------------------------
# the benchmark

class Run:
    "The state of one benchmark run: the model, its TrainStep and FastFlow, and the JSON being filled."

    def __init__(self, args):
        from flowpp.fast import FastFlow, TrainStep, CUDA_GRAPH_WARMUP
        from flowpp.model import FlowPlusPlus, get_config
        self.args, self.t_start = args, time.perf_counter()
        self.device = device = benchlib.pick_device(args.device)
        if args.kernels and device.type != "cuda":  # Triton's interpreter, chosen before flowpp.kernels is imported
            os.environ.setdefault("TRITON_INTERPRET", "1")
        if args.warmup_iters is None:  # the CUDA-graph warm-up, the capture, and one replay before the timed loop
            args.warmup_iters = CUDA_GRAPH_WARMUP + 2
        self.fast = fast_path_from(args, device)
        overrides = {}
        for item in args.set:
            k, _, v = item.partition("=")
            try:
                overrides[k] = json.loads(v)
            except json.JSONDecodeError:
                overrides[k] = v
        torch.manual_seed(args.seed)
        if args.checkpoint:
            from flowpp.train import load_model
            model = load_model(args.checkpoint, map_location=device)
            self.config_name = f"checkpoint {args.checkpoint}"
        else:
            model = FlowPlusPlus(get_config(args.config, **overrides)).to(device)
            self.config_name = args.config
        self.config = config = model.config
        self.x_real, self.source = real_images(config, max(args.batch_size, 64), args.seed)
        self.x_train = self.x_real[:args.batch_size].to(device)
        if not args.checkpoint:
            init, _ = real_images(config, args.init_batch_size, args.seed)
            model.initialize(init.to(device))
        # the initial weights, off the GPU: the reference models of the flops and equivalence phases start from them
        self.pristine = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        if device.type == "cuda" and "profile" in args.phases:
            # the profiler's CUDA side is set up before any CUDA graph is captured: profiling the replay of a graph
            # captured before the profiler's first use has failed in some PyTorch versions (pytorch/pytorch#75504)
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]):
                pass
        self.model = model
        self.step = TrainStep(model, self.fast, lr=args.lr, grad_clip=1.0, ema=ema, ema_decay=0.999)
        self.ff = FastFlow(model, self.fast)
        self.figures: dict = {}
        self.result = {
            "schema": SCHEMA,
            "label": args.label or label_of(args, self.fast),
            "path": args.path,
            "complete": False, "phases_done": [], "phases_requested": args.phases, "errors": {},
            "device": benchlib.device_info(device),
            "config": {"name": self.config_name, "parameters": sum(p.numel() for p in model.parameters()),
                       "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
                       "init_batch_size": args.init_batch_size, "warmup_iters": args.warmup_iters,
                       "train_iters": args.train_iters, "eval_iters": args.eval_iters,
                       "sample_images": args.sample_images, "sample_repeats": args.sample_repeats,
                       "profile_steps": args.profile_steps, "lr": args.lr, "grad_clip": 1.0, "ema_decay": 0.999,
                       "seed": args.seed, "data": self.source, "smoke": args.smoke, "overrides": overrides,
                       "model_config": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in dataclasses.asdict(config).items()}},
            "options": dataclasses.asdict(self.fast),
            "figures": self.figures,
            "command": benchlib.command_line(),
        }

    def save(self) -> None:
        self.result["wall_seconds"] = time.perf_counter() - self.t_start
        self.result["vs_port_reference_md"] = compare_with_port(self.figures, self.result["device"], self.config_name,
                                                                self.args.batch_size)
        benchlib.write_json(self.args.out, self.result)

    # the phases ---------------------------------------------------------------------------------------------

    def train(self) -> None:
        "Warm-up steps one by one (compilation, CUDA-graph capture), then train_iters steps timed back to back."
        a, device, step, x = self.args, self.device, self.step, self.x_train
        benchlib.reset_peak_memory(device)
        warm = [benchlib.time_once(lambda: step(x, a.lr), device) for _ in range(a.warmup_iters)]
        seconds = benchlib.time_loop(lambda: step(x, a.lr), a.train_iters, device)
        mem = benchlib.peak_memory(device)
        stats = step.read_stats()  # one host read, after the timed loop
        step_s = seconds / a.train_iters
        capture = step.timings.get("capture_seconds")
        f = self.figures
        f.update(train_images_per_second=a.batch_size * a.train_iters / seconds, train_step_ms=1000 * step_s,
                 train_first_step_seconds=warm[0] if warm else None, train_warmup_seconds=warm,
                 capture_seconds=capture, cuda_graph=step.timings.get("cuda_graph"),
                 peak_memory_bytes=mem["bytes"], peak_memory_gib=mem["gib"], peak_memory_kind=mem["kind"],
                 train_bpd_last=stats["train_bpd"], train_grad_norm_last=stats["grad_norm"],
                 train_nonfinite_steps=stats["nonfinite_steps"],
                 train_losses_finite=stats["nonfinite_steps"] == 0 and math.isfinite(stats["train_bpd"]))
        if self.fast.compile or capture:
            # compilation (and capture) = the warm-up's time beyond as many steady steps
            f["compile_seconds_estimate"] = max(0.0, sum(warm) - len(warm) * step_s - (capture or 0.0))
            f["compile_seconds_estimate_includes"] = "warm-up steps minus steady steps minus the capture"

    def profile(self) -> None:
        "One steady-state step under torch.profiler: the top kernels, GPU-busy ms vs wall ms, launches per step."
        a = self.args
        prof = benchlib.profile_steps(lambda: self.step(self.x_train, a.lr), self.device, steps=a.profile_steps)
        self.result["profile"] = prof
        self.figures.update(benchlib.profile_figures(prof, self.figures.get("train_step_ms")))

    def sample(self) -> None:
        "sample(n): one warm-up, then the median of sample_repeats runs, each synchronised."
        a, device = self.args, self.device
        g = torch.Generator(device=device).manual_seed(a.seed)
        with torch.no_grad():
            warm = benchlib.time_once(lambda: self.ff.sample(a.sample_images, 1.0, g), device)
            times = [benchlib.time_once(lambda: self.ff.sample(a.sample_images, 1.0, g), device)
                     for _ in range(a.sample_repeats)]
        self.figures.update(sample_seconds=statistics.median(times), sample_seconds_min=min(times),
                            sample_images=a.sample_images, sample_warmup_seconds=warm)

    def flops(self) -> None:
        "FLOPs of the eager float32 model (device independent) and the measured matmul ceiling."
        from flowpp.fast import FastFlow
        from flowpp.model import FlowPlusPlus
        a, device = self.args, self.device
        ref = FlowPlusPlus(self.config).to(device)
        ref.load_state_dict(self.pristine)
        x = self.x_train[:min(4, len(self.x_train))]
        ff = FastFlow(ref)
        ref.eval()
        with torch.no_grad():
            fwd = benchlib.flop_count(lambda: ff.log_prob(x, check=False))
        ref.train()
        train = benchlib.flop_count(lambda: (-ff.log_prob(x, check=False).mean()).backward())
        peak = benchlib.peak_matmul_tflops(device, a.matmul_size or (8192 if device.type == "cuda" else 512),
                                           20 if device.type == "cuda" else 3)
        f = self.figures
        f.update(forward_gflop_per_image=fwd["total"] / len(x) / 1e9, train_gflop_per_image_counted=train["total"] / len(x) / 1e9,
                 train_flop_by_op_per_image={k: v / len(x) for k, v in train["by_op"].items()},
                 peak_matmul_tflops=peak["tflops"], peak_matmul=peak)
        if "train_images_per_second" in f:  # training FLOP/s ~ 3 x forward FLOPs x images/s (backward ~ 2 x forward)
            f["train_tflops"] = 3 * fwd["total"] / len(x) * f["train_images_per_second"] / 1e12
            f["fraction_of_peak"] = f["train_tflops"] / peak["tflops"]

    def eval(self) -> None:
        "FastFlow.log_prob under no_grad in eval mode at eval_batch_size: one warm-up batch, then eval_iters timed."
        a, device = self.args, self.device
        x_eval = benchlib.tile(self.x_real, a.eval_batch_size).to(device)
        self.model.eval()
        try:
            with torch.no_grad():
                warm = benchlib.time_once(lambda: self.ff.log_prob(x_eval, check=False), device)
                seconds = benchlib.time_loop(lambda: self.ff.log_prob(x_eval, check=False), a.eval_iters, device)
        finally:
            self.model.train()
        self.figures.update(eval_images_per_second=a.eval_batch_size * a.eval_iters / seconds,
                            eval_batch_size=a.eval_batch_size, eval_warmup_seconds=warm)

    def reconstruction(self) -> None:
        "decode(encode(x)) == x and the inverse's error on 64 real images, on this path and on the float32 reference."
        from flowpp.fast import FastFlow, reconstruction
        from flowpp.model import FlowPlusPlus
        x = self.x_real[:64].to(self.device)
        rec = reconstruction(self.ff, x)
        ref_model = FlowPlusPlus(self.config).to(self.device)  # the same (trained a few steps) weights, plain and eager
        ref_model.load_state_dict(self.model.state_dict())
        rec_ref = reconstruction(FastFlow(ref_model), x)
        self.figures.update(max_reconstruction_error_logit=rec["max_error_logit"], decode_encode_exact=rec["exact"],
                            decode_encode_mismatched_pixels=rec["mismatched_pixels"], reconstruction_images=rec["images"],
                            reference_max_reconstruction_error_logit=rec_ref["max_error_logit"],
                            reference_decode_encode_exact=rec_ref["exact"])

    def equivalence(self) -> None:
        "Bits/dim and gradients of this path's step against the float32 reference on the initial weights (flowpp.fast.equivalence)."
        from flowpp.fast import equivalence
        from flowpp.model import FlowPlusPlus
        ref = FlowPlusPlus(self.config).to(self.device)
        ref.load_state_dict(self.pristine)
        self.figures["equivalence"] = equivalence(ref, self.x_train, self.fast, seed=self.args.seed)


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = Run(args)
    run.save()
    failed = benchlib.run_phases(run, args.phases)
    f = run.figures
    eq = f.get("equivalence") or {}
    show = lambda key, fmt: (fmt.format(f[key]) if isinstance(f.get(key), (int, float)) else "-")
    print(f"{run.result['label']} on {run.result['device']['name']} ({run.config_name}, batch {args.batch_size}): "
          f"train {show('train_images_per_second', '{:.1f}')} img/s ({show('train_step_ms', '{:.1f}')} ms/step, "
          f"cuda graph: {f.get('cuda_graph')}), eval {show('eval_images_per_second', '{:.1f}')} img/s, "
          f"sample {args.sample_images} in {show('sample_seconds', '{:.3f}')} s, peak memory {show('peak_memory_gib', '{:.2f}')} GiB, "
          f"decode(encode(x)) exact: {f.get('decode_encode_exact', '-')}"
          + (f", bpd rel diff {eq['bpd_rel_diff']:.1e}, grad cosine {eq['grad_cosine']:.5f}" if eq else "")
          + f" -> {args.out}", flush=True)
    if failed:
        raise SystemExit(f"phases failed: {failed} (see 'errors' in {args.out})")
    return run.result


if __name__ == "__main__":
    main()
