"""Benchmark Flow++ training, evaluation and sampling along a fast path; write every figure to one JSON file.

    python bench/run.py --config cifar10 --batch-size 64 --out bench/results/NAME.json [--amp --channels-last --compile ...]
    python bench/run.py --smoke --out /tmp/smoke.json       # the `tiny` config on the CPU in well under a minute

See bench/README.md for what each figure means and how it is measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing flowpp (e.g. on a bare GPU machine)
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from flowpp.fast import FastFlow, FastPath, equivalence, reconstruction
from flowpp.model import FlowPlusPlus, get_config

SCHEMA = "flowpp-bench-v1"
GIB = 2 ** 30

# The 2019 PyTorch port on one H100 (torch 2.11), CIFAR config, batch 64: ../shared/docs/reference.md,
# "Measured on one H100". `better` says which direction is an improvement.
PORT_H100 = {
    "source": "shared/docs/reference.md, 'Measured on one H100' (the 2019 PyTorch port, torch 2.11, CIFAR config, batch 64)",
    "device": "NVIDIA H100",
    "figures": {
        "train_images_per_second": {"value": 128.0, "better": "higher", "note": "fp32 as shipped"},
        "train_images_per_second_best": {"value": 150.0, "better": "higher", "note": "torch.compile + bf16 autocast",
                                         "ours": "train_images_per_second"},
        "compile_seconds": {"value": 360.0, "better": "lower", "note": "the port's torch.compile took 6 minutes (ours: only with --compile)",
                            "ours": "compile_seconds_estimate"},
        "peak_memory_gib": {"value": 51.4, "better": "lower", "note": "peak GPU memory while training"},
        "eval_images_per_second": {"value": 800.0, "better": "higher", "note": "likelihood evaluation at batch 256"},
        "sample_seconds": {"value": 0.30, "better": "lower", "note": "64 images, 100-step bisection"},
        "max_reconstruction_error_logit": {"value": 7.2e-3, "better": "lower", "note": "max inverse error, logit space, float32"},
        "forward_gflop_per_image": {"value": 25.1, "better": "lower", "note": "the port's model differs (28.8 M parameters, factor-out)"},
    },
}


# ----------------------------------------------------------------------------------------------------------
# timing and device facts

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "name": device_name(device), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / GIB, 1),
                    cudnn=torch.backends.cudnn.version(),
                    sdpa={"flash": torch.backends.cuda.flash_sdp_enabled(),
                          "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                          "math": torch.backends.cuda.math_sdp_enabled()})
    info["inductor_caches_disabled"] = os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "") == "1"
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device: torch.device) -> float:
    "Wall-clock seconds of one call, synchronised (for warm-up and compile times)."
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_loop(fn, iters: int, device: torch.device) -> float:
    "Seconds for `iters` back-to-back calls: CUDA events on a GPU, perf_counter on a CPU."
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return time.perf_counter() - t0


def peak_matmul_tflops(device: torch.device, size: int, reps: int) -> dict:
    "Measured peak of a large square matmul: bfloat16 on a GPU, float32 on a CPU."
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    for _ in range(2):
        a @ b
    seconds = time_loop(lambda: a @ b, reps, device)
    return {"tflops": 2 * size ** 3 * reps / seconds / 1e12, "dtype": str(dtype).replace("torch.", ""), "size": size,
            "reps": reps}


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        b = torch.cuda.max_memory_allocated(device)
        return {"bytes": b, "gib": b / GIB, "kind": "torch.cuda.max_memory_allocated during the timed training steps"}
    b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"bytes": b, "gib": b / GIB, "kind": "CPU: peak resident set size of the whole benchmark process so far "
                                                 "(includes Python, torch and the data, not only the training step)"}


def flops_per_image(model: FlowPlusPlus, x: torch.Tensor) -> dict:
    "Matmul/convolution/attention FLOPs per image of one log_prob forward, and of forward + backward (FlopCounterMode)."
    from torch.utils import flop_counter
    aten = torch.ops.aten
    custom = {}  # the CPU flash-attention kernels have no formula in torch's table
    if hasattr(flop_counter, "sdpa_flop_count"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = \
            lambda q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v)
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = \
            lambda go, q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_backward_flop_count(go, q, k, v)
    ff = FastFlow(model)
    was_training = model.training
    model.eval()
    try:
        with flop_counter.FlopCounterMode(display=False, custom_mapping=custom) as fc:
            with torch.no_grad():
                ff.log_prob(x, check=False)
        forward = fc.get_total_flops()
        with flop_counter.FlopCounterMode(display=False, custom_mapping=custom) as fc:
            ff.loss(x).backward()
        train = fc.get_total_flops()
        by_op = {str(k): v / len(x) for k, v in fc.get_flop_counts()["Global"].items()}
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {"forward": forward / len(x), "train": train / len(x), "train_by_op": by_op}


# ----------------------------------------------------------------------------------------------------------
# data

def real_images(config, n: int, seed: int) -> tuple[torch.Tensor, str]:
    "n uint8 images for the config: CIFAR-10 test images (fixture) or digits where the shape fits, else random."
    shape, levels = tuple(config.image_shape), config.num_levels
    g = torch.Generator().manual_seed(seed)
    if shape == (3, 32, 32) and levels == 256:
        x = torch.from_numpy(np.load(ROOT / "nbs" / "fixtures" / "cifar10_test_64.npz")["x"]).permute(0, 3, 1, 2).contiguous()
        source = "CIFAR-10 test images 0-63 (nbs/fixtures/cifar10_test_64.npz)"
    elif shape == (1, 8, 8) and levels == 17:
        from flowpp.data import load_digits
        x, source = load_digits("test").images, "scikit-learn digits, test split"
    else:
        x = torch.randint(0, levels, (n, *shape), generator=g, dtype=torch.uint8)
        source = f"random uint8 in [0, {levels})"
    reps = math.ceil(n / len(x))
    if reps > 1:
        source += f", tiled {reps}x"
    return x.repeat(reps, 1, 1, 1)[:n].contiguous(), source


# ----------------------------------------------------------------------------------------------------------
# the benchmark

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--smoke", action="store_true",
                   help="CPU smoke run: the tiny config, batch 8, few iterations (unless given explicitly)")
    p.add_argument("--config", default=None, help="model config name (default: cifar10; tiny with --smoke)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="override a model config field")
    p.add_argument("--checkpoint", default=None, help="benchmark the EMA weights of a flowpp checkpoint instead of a fresh init")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 64; 8 with --smoke)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="evaluation batch (default 256; 32 with --smoke)")
    p.add_argument("--init-batch-size", type=int, default=64, help="images for the data-dependent init")
    p.add_argument("--warmup-iters", type=int, default=None, help="untimed training steps first (default 3; 1 with --smoke)")
    p.add_argument("--train-iters", type=int, default=None, help="timed training steps (default 20; 3 with --smoke)")
    p.add_argument("--eval-iters", type=int, default=None, help="timed evaluation batches (default 10; 2 with --smoke)")
    p.add_argument("--sample-images", type=int, default=64)
    p.add_argument("--sample-repeats", type=int, default=None, help="timed sampling runs (default 5; 2 with --smoke)")
    p.add_argument("--matmul-size", type=int, default=None, help="peak matmul size (default 8192 on a GPU, 1024 on a CPU)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-equivalence", action="store_true", help="skip the equivalence check against the float32 path")
    p.add_argument("--label", default=None, help="a name for this run in the JSON (default: from the options)")
    fast = p.add_argument_group("fast path (flowpp.fast.FastPath)")
    fast.add_argument("--amp", action="store_true", help="bfloat16 autocast for the conditioner networks (log_prob, loss)")
    fast.add_argument("--amp-inverse", action="store_true",
                      help="bfloat16 conditioners in encode/decode/sample too (faster sampling; decode(encode(x)) == x is lost)")
    fast.add_argument("--channels-last", action="store_true")
    fast.add_argument("--compile", action="store_true", help="torch.compile")
    fast.add_argument("--compile-scope", default="regional", choices=["regional", "model"])
    fast.add_argument("--compile-mode", default=None,
                      choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    fast.add_argument("--compile-backend", default="inductor", help="inductor, or aot_eager (trace only)")
    fast.add_argument("--compile-budget-s", type=float, default=600.0)
    fast.add_argument("--tf32", action="store_true", help="allow TF32 (also reaches the flow's 1x1 convolutions)")
    fast.add_argument("--fused-adam", action="store_true")
    args = p.parse_args(argv)
    small = args.smoke
    defaults = dict(config="tiny" if small else "cifar10", batch_size=8 if small else 64,
                    eval_batch_size=32 if small else 256, warmup_iters=1 if small else 3, train_iters=3 if small else 20,
                    eval_iters=2 if small else 10, sample_repeats=2 if small else 5)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if small and args.device == "auto":
        args.device = "cpu"
    return args


def fast_path_from(args) -> FastPath:
    return FastPath(amp=args.amp, amp_inverse=args.amp_inverse, channels_last=args.channels_last, compile=args.compile,
                    compile_scope=args.compile_scope, compile_mode=args.compile_mode,
                    compile_backend=args.compile_backend, compile_budget_s=args.compile_budget_s, tf32=args.tf32,
                    fused_adam=args.fused_adam)


def label_of(fast: FastPath) -> str:
    if fast.is_reference:
        return "float32 reference"
    parts = [n for n, on in (("amp", fast.amp), ("amp_inverse", fast.amp_inverse), ("channels_last", fast.channels_last), ("tf32", fast.tf32),
                             ("fused_adam", fast.fused_adam)) if on]
    if fast.compile:
        parts.append(f"compile({fast.compile_scope}, {fast.compile_backend}, {fast.compile_mode or 'default'})")
    return " + ".join(parts)


def compare_with_port(figures: dict, device: dict, config_name: str, batch_size: int) -> dict:
    comparable = device["type"] == "cuda" and "H100" in device["name"] and config_name == "cifar10" and batch_size == 64
    ratios = {}
    for name, port in PORT_H100["figures"].items():
        ours = figures.get(port.get("ours", name))
        if isinstance(ours, (int, float)) and ours > 0:
            ratios[name] = {"ours": ours, "port": port["value"], "ours_over_port": ours / port["value"],
                            "better": port["better"], "note": port["note"]}
    out = {"port": PORT_H100, "comparable": comparable, "ratios": ratios}
    if comparable:
        out["speedup_train_vs_port_as_shipped"] = figures["train_images_per_second"] / 128.0
        out["speedup_train_vs_port_best"] = figures["train_images_per_second"] / 150.0
        out["meets_10x_train"] = out["speedup_train_vs_port_best"] >= 10
    else:
        out["note"] = (f"NOT COMPARABLE: measured on {device['name']} ({device['type']}), config {config_name}, batch "
                       f"{batch_size}; the port's figures are from an H100 with the cifar10 config at batch 64. The "
                       "ratios are listed only to show the arithmetic; do not read them as speed-ups.")
    return out


def run(args) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    if args.checkpoint:
        from flowpp.train import load_model
        model = load_model(args.checkpoint, map_location=device)
        config_name = f"checkpoint {args.checkpoint}"
    else:
        model = FlowPlusPlus(get_config(args.config, **overrides)).to(device)
        config_name = args.config
    config = model.config
    x_real, source = real_images(config, max(args.batch_size, 64), args.seed)
    x_train = x_real[:args.batch_size].to(device)
    if not args.checkpoint:
        init, _ = real_images(config, args.init_batch_size, args.seed)
        model.initialize(init.to(device))
    pristine = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}  # for equivalence, off the GPU
    fast = fast_path_from(args)
    ff = FastFlow(model, fast)
    figures: dict = {}

    # training: forward + backward + Adam step on one batch already on the device
    opt = ff.optimizer(lr=args.lr)
    model.train()
    losses = []

    def step():
        loss = ff.loss(x_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    warmup = [time_once(step, device) for _ in range(args.warmup_iters)]
    seconds = time_loop(step, args.train_iters, device)
    mem = peak_memory(device)
    step_s = seconds / args.train_iters
    figures.update(train_images_per_second=args.batch_size * args.train_iters / seconds, train_step_ms=1000 * step_s,
                   train_warmup_seconds=sum(warmup), train_first_step_seconds=warmup[0] if warmup else None,
                   compile_seconds_estimate=max(0.0, sum(warmup) - len(warmup) * step_s) if fast.compile else None,
                   peak_memory_bytes=mem["bytes"], peak_memory_gib=mem["gib"], peak_memory_kind=mem["kind"],
                   train_loss_first=losses[0].item(), train_loss_last=losses[-1].item(),
                   train_losses_finite=bool(torch.isfinite(torch.stack(losses)).all()))

    # evaluation: no_grad one-sample log_prob at a large batch
    model.eval()
    x_eval = x_real.repeat(math.ceil(args.eval_batch_size / len(x_real)), 1, 1, 1)[:args.eval_batch_size].to(device)

    def evaluate():
        with torch.no_grad():
            ff.log_prob(x_eval, check=False)

    eval_warmup = time_once(evaluate, device)
    seconds = time_loop(evaluate, args.eval_iters, device)
    figures.update(eval_images_per_second=args.eval_batch_size * args.eval_iters / seconds,
                   eval_batch_size=args.eval_batch_size, eval_warmup_seconds=eval_warmup)

    # sampling: n images, z ~ N(0, I), decoded (the mixture CDF inverted by bracketed Newton)
    g = torch.Generator(device=device).manual_seed(args.seed)
    sample_warmup = time_once(lambda: ff.sample(args.sample_images, 1.0, g), device)
    times = [time_once(lambda: ff.sample(args.sample_images, 1.0, g), device) for _ in range(args.sample_repeats)]
    figures.update(sample_seconds=statistics.median(times), sample_seconds_min=min(times),
                   sample_images=args.sample_images, sample_warmup_seconds=sample_warmup)

    # exactness on real images: the fast path as benchmarked, and the float32 reference on the same weights
    x_rec = x_real[:64].to(device)
    rec = reconstruction(ff, x_rec)
    reference_model = FlowPlusPlus(config).to(device)  # the same weights, plain layout, nothing compiled
    reference_model.load_state_dict(model.state_dict())
    rec_ref = reconstruction(FastFlow(reference_model), x_rec)
    figures.update(max_reconstruction_error_logit=rec["max_error_logit"], decode_encode_exact=rec["exact"],
                   decode_encode_mismatched_pixels=rec["mismatched_pixels"], reconstruction_images=rec["images"],
                   reference_max_reconstruction_error_logit=rec_ref["max_error_logit"],
                   reference_decode_encode_exact=rec_ref["exact"])

    # FLOPs (eager float32 reference; device independent) and the fraction of the measured peak
    model_ref = FlowPlusPlus(config).to(device)
    model_ref.load_state_dict(pristine)
    flops = flops_per_image(model_ref, x_train[:min(4, len(x_train))])
    peak = peak_matmul_tflops(device, args.matmul_size or (8192 if device.type == "cuda" else 1024),
                              20 if device.type == "cuda" else 5)
    # training FLOP/s ~ 3 x forward FLOPs x images/s (backward ~ 2 x forward)
    train_tflops = 3 * flops["forward"] * figures["train_images_per_second"] / 1e12
    figures.update(forward_gflop_per_image=flops["forward"] / 1e9, train_gflop_per_image_counted=flops["train"] / 1e9,
                   train_flop_by_op_per_image=flops["train_by_op"], peak_matmul_tflops=peak["tflops"],
                   peak_matmul=peak, train_tflops=train_tflops, fraction_of_peak=train_tflops / peak["tflops"])

    # the same model: bits/dim and gradients against the float32 reference, on the initial weights
    if not args.no_equivalence:
        figures["equivalence"] = equivalence(model_ref, x_train, fast, seed=args.seed)
    figures["compile_first_call_seconds"] = ff.compile_seconds
    del model_ref, reference_model

    device_facts = device_info(device)
    return {
        "schema": SCHEMA,
        "label": args.label or label_of(fast),
        "device": device_facts,
        "config": {"name": config_name, "parameters": sum(p.numel() for p in model.parameters()),
                   "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
                   "init_batch_size": args.init_batch_size, "warmup_iters": args.warmup_iters,
                   "train_iters": args.train_iters, "eval_iters": args.eval_iters, "sample_repeats": args.sample_repeats,
                   "lr": args.lr, "seed": args.seed, "data": source, "smoke": args.smoke, "overrides": overrides,
                   "model_config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}},
        "options": asdict(fast),
        "figures": figures,
        "vs_port": compare_with_port(figures, device_facts, config_name, args.batch_size),
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "wall_seconds": time.perf_counter() - t_start,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    f = result["figures"]
    eq = f.get("equivalence", {})
    print(f"{result['label']} on {result['device']['name']} ({result['config']['name']}, batch {args.batch_size}): "
          f"train {f['train_images_per_second']:.1f} img/s, eval {f['eval_images_per_second']:.1f} img/s, "
          f"sample {args.sample_images} in {f['sample_seconds']:.3f} s, peak memory {f['peak_memory_gib']:.2f} GiB, "
          f"{f['forward_gflop_per_image']:.3g} GFLOP/img, {100 * f['fraction_of_peak']:.1f}% of peak, "
          f"decode(encode(x)) exact: {f['decode_encode_exact']}"
          + (f", bpd rel diff {eq['bpd_rel_diff']:.1e}, grad cosine {eq['grad_cosine']:.5f}" if eq else "")
          + f" -> {out}")
    return result


if __name__ == "__main__":
    main()
