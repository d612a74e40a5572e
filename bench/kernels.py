"""Time the mixture coupling alone on the fused kernels (flowpp.kernels, notebook 09a) against the PyTorch reference
path, eager and compiled; write every figure to one JSON file.

    python3 bench/kernels.py --out kernels.json           # a CUDA GPU: the CIFAR-10 model's coupling shapes, batch 64, K = 32
    python3 bench/kernels.py --smoke --out /tmp/k.json    # a CPU: Triton's interpreter, one `tiny` coupling shape

What is timed is the coupling's elementwise map given the conditioner's output p, `MixLogisticCoupling.transform`
(and `inverse_transform`), which is what the kernels replace; the conditioner network is not part of it. For each
coupling shape of the model (the main flow's and the dequantizer's; identical shapes are timed once and list where
they occur) and each layout of p (`channels_first`: the conditioner's output contiguous, as in the eager model;
`channels_last`: the K parameters of an element adjacent, as on the fast path), four variants:

    kernels             use_kernels on: one forward kernel, one backward kernel, one inverse kernel
    reference           the PyTorch composition of notebooks 02 and 05 (the inverse: solve_mixture_logit_cdf_fixed)
    reference_compiled  torch.compile of the reference (inductor on a GPU; `aot_eager` in --smoke, which only checks
                        that the path runs)
    kernels_compiled    torch.compile of the kernel path (inductor traces into the triton_ops on a GPU)

and three measurements: `forward` (y and the elementwise log-det, no gradient), `forward_backward` (the same with
gradients of fixed random upstream gradients with respect to x and p) and `inverse` (x from y, no gradient).
Each is warmed up (`--warmup` calls; the compiled variants compile there, `compile_seconds` is that first call),
then timed `--repeats` times, one call each, with CUDA events on a GPU (perf_counter on a CPU); `median_ms` is the
median. `ratios` divide each variant's median by the kernels' (above 1: the kernels are faster). `accuracy` compares,
once per shape and layout, the kernels and the float32 reference against the reference in float64: the largest
|out - ref| / (1 + |ref|) of y, of the log-det and of the gradients, and for the inverse the largest
|x_hat - x| / max(1, |x|) of the round trip x -> y -> x_hat.

Needs only torch, triton and numpy, and imports flowpp from the checkout it lives in (like bench/run.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing flowpp (e.g. on a bare GPU machine)
    sys.path.insert(0, str(ROOT))

SCHEMA = "flowpp-bench-kernels-v1"
MEASUREMENTS = ("forward", "forward_backward", "inverse")
VARIANTS = ("kernels", "reference", "reference_compiled", "kernels_compiled")
LAYOUTS = ("channels_first", "channels_last")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="where to write the JSON")
    ap.add_argument("--smoke", action="store_true",
                    help="the `tiny` config's first coupling shape at batch 2, 1 warm-up and 2 timed calls; "
                         "on a CPU in Triton's interpreter")
    ap.add_argument("--config", default=None, help="model config whose coupling shapes are timed (default cifar10; tiny with --smoke)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (2 with --smoke)")
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {LAYOUTS}")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per variant and measurement (default 5; 1 with --smoke)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per variant and measurement (default 50; 2 with --smoke)")
    ap.add_argument("--no-compile", action="store_true", help="skip the two compiled variants")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def coupling_shapes(config) -> list[dict]:
    "The (C, H, W) of every mixture coupling's transformed half in the main flow and the dequantizer, deduplicated."
    from flowpp.dequantizer import parse_stage
    from flowpp.layers import get_split
    found: dict[tuple, list[str]] = {}

    def walk(stages, shape, where):
        C, H, W = shape
        for spec in stages:
            name, steps = parse_stage(spec)
            if name == "squeeze":
                C, H, W = 4 * C, H // 2, W // 2
                continue
            half = tuple(get_split(name).half_shape(C, H, W))
            found.setdefault(half, []).append(f"{where} {spec} at {C}x{H}x{W} ({steps} couplings)")

    walk(config.stages, config.image_shape, "main flow")
    if config.dequantizer == "variational":
        walk(config.dequant_stages, config.image_shape, "dequantizer")
    return [{"x_shape_chw": list(k), "used_by": v} for k, v in found.items()]


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("bench/kernels.py times the kernels on a CUDA GPU; on a CPU run it with --smoke "
                         "(Triton's interpreter, which shows the path works, not how fast it is)")
    if not cuda:  # the interpreter must be chosen before flowpp.kernels defines the kernels
        os.environ["TRITON_INTERPRET"] = "1"
        # it evaluates both sides of every tl.where with numpy; warnings about the discarded side are noise
        import warnings
        import numpy as np
        np.seterr(divide="ignore", invalid="ignore", over="ignore")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")
    try:
        import triton
    except ImportError:
        raise SystemExit("bench/kernels.py needs Triton: pip install triton")
    import numpy as np
    from flowpp.coupling import MixLogisticCoupling
    from flowpp.kernels import use_kernels
    from flowpp.logistic import FIXED_ITERS
    from flowpp.model import get_config

    device = torch.device("cuda" if cuda else "cpu")
    config = get_config(args.config or ("tiny" if args.smoke else "cifar10"))
    batch = args.batch_size or (2 if args.smoke else 64)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    repeats = args.repeats if args.repeats is not None else (2 if args.smoke else 50)
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    if unknown := set(layouts) - set(LAYOUTS):
        raise SystemExit(f"unknown layouts {sorted(unknown)}; choose from {LAYOUTS}")
    backend = "inductor" if cuda else "aot_eager"
    K = config.components
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def time_calls(fn) -> tuple[float, float]:
        "(first call seconds, median ms of the timed calls) after `warmup` untimed calls."
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - t0
        for _ in range(warmup - 1):
            fn()
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
        return first, statistics.median(times)

    def inputs(C, H, W, layout, gen):
        "x (B, C, H, W) and p (B, C, 2 + 3K, H, W) like a trained model's, p in the given layout."
        P = 2 + 3 * K
        p = torch.empty(batch, C, P, H, W)
        p[:, :, 0] = torch.randn(batch, C, H, W, generator=gen) * 0.5
        p[:, :, 1] = torch.randn(batch, C, H, W, generator=gen)
        p[:, :, 2:2 + K] = torch.randn(batch, C, K, H, W, generator=gen) * 2
        p[:, :, 2 + K:2 + 2 * K] = torch.randn(batch, C, K, H, W, generator=gen) * 2
        p[:, :, 2 + 2 * K:] = torch.rand(batch, C, K, H, W, generator=gen) * 4 - 3
        x = torch.randn(batch, C, H, W, generator=gen) * 2
        flat = p.view(batch, C * P, H, W).to(device)
        if layout == "channels_last":
            flat = flat.contiguous(memory_format=torch.channels_last)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
        return x.to(device), flat.view(batch, C, P, H, W)

    def rel(out, ref):
        return ((out.double() - ref.double()).abs() / (1 + ref.double().abs())).max().item()

    shapes = coupling_shapes(config)
    timed = shapes[:1] if args.smoke else shapes
    results = []
    started = time.perf_counter()
    for shape in timed:
        C, H, W = shape["x_shape_chw"]
        for layout in layouts:
            gen = torch.Generator().manual_seed(args.seed)
            x, p = inputs(C, H, W, layout, gen)
            grad_y, grad_logdet = torch.randn_like(x), torch.randn_like(x)
            torch.manual_seed(args.seed)
            coupling = MixLogisticCoupling(C, C, H, W, components=K, filters=8, blocks=1, heads=2).to(device)
            with torch.no_grad():
                y = coupling.transform(x, p)[0]
            x_req, p_req = x.clone().requires_grad_(), p.clone().requires_grad_()

            def forward(f):
                def run():
                    with torch.no_grad():
                        return f(x, p)
                return run

            def forward_backward(f):
                def run():
                    out = f(x_req, p_req)
                    return torch.autograd.grad(list(out), [x_req, p_req], [grad_y, grad_logdet])
                return run

            def inverse(f):
                def run():
                    with torch.no_grad():
                        return f(y, p)
                return run

            medians, compile_seconds = {}, {}
            for variant in VARIANTS:
                compiled = variant.endswith("_compiled")
                if compiled and args.no_compile:
                    continue
                use_kernels(coupling, variant.startswith("kernels"))
                fwd, inv = coupling.transform, coupling.inverse_transform
                if compiled:
                    torch._dynamo.reset()
                    fwd = torch.compile(fwd, backend=backend, fullgraph=True)
                    inv = torch.compile(inv, backend=backend, fullgraph=True)
                medians[variant], compile_seconds[variant] = {}, {}
                for name, make, f in (("forward", forward, fwd), ("forward_backward", forward_backward, fwd),
                                      ("inverse", inverse, inv)):
                    first, median = time_calls(make(f))
                    medians[variant][name] = median
                    if compiled:
                        compile_seconds[variant][name] = first
                print(f"{C}x{H}x{W} {layout} {variant}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in medians[variant].items())
                      + f"  ({time.perf_counter() - started:.0f} s elapsed)", flush=True)
            ratios = {f"{v}_over_kernels": {m: medians[v][m] / medians["kernels"][m] for m in MEASUREMENTS}
                      for v in medians if v != "kernels"}

            # accuracy: kernels and float32 reference against the float64 reference
            use_kernels(coupling, False)
            acc = {}
            ref64 = coupling.double()
            xd, pd = x.double().requires_grad_(), p.double().requires_grad_()
            out64 = ref64.transform(xd, pd)
            g64 = torch.autograd.grad(list(out64), [xd, pd], [grad_y.double(), grad_logdet.double()])
            coupling.float()
            for variant in ("kernels", "reference"):
                use_kernels(coupling, variant == "kernels")
                out = coupling.transform(x_req, p_req)
                g = torch.autograd.grad(list(out), [x_req, p_req], [grad_y, grad_logdet])
                with torch.no_grad():
                    x_hat = coupling.inverse_transform(coupling.transform(x, p)[0], p)[0]
                acc[variant] = {"y": rel(out[0], out64[0]), "logdet": rel(out[1], out64[1]),
                                "grad_x": rel(g[0], g64[0]), "grad_p": rel(g[1], g64[1]),
                                "inverse_roundtrip": ((x_hat.double() - x.double()).abs() / x.double().abs().clamp(min=1)).max().item()}
            results.append({"x_shape": [batch, C, H, W], "p_shape": [batch, C, 2 + 3 * K, H, W], "layout": layout,
                            "used_by": shape["used_by"], "median_ms": medians, "compile_seconds": compile_seconds,
                            "ratios": ratios, "accuracy": acc})

    def geomean(values):
        return float(np.exp(np.mean(np.log(values)))) if values else None

    summary = {f"{v}_over_kernels_geomean": {m: geomean([r["ratios"][f"{v}_over_kernels"][m] for r in results
                                                         if f"{v}_over_kernels" in r["ratios"]]) for m in MEASUREMENTS}
               for v in VARIANTS if v != "kernels" and not (v.endswith("_compiled") and args.no_compile)}
    device_info = {"type": device.type, "torch": torch.__version__, "triton": triton.__version__,
                   "cuda": torch.version.cuda, "python": platform.python_version(),
                   "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    if cuda:
        props = torch.cuda.get_device_properties(device)
        device_info.update(name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}")
    else:
        device_info.update(name=platform.processor() or platform.machine())
    result = {"schema": SCHEMA, "device": device_info,
              "config": {"model": config_name(args), "batch_size": batch, "components": K, "smoke": args.smoke,
                         "coupling_shapes": shapes,
                         "layouts": layouts, "warmup": warmup, "repeats": repeats, "compile": not args.no_compile,
                         "compile_backend": None if args.no_compile else backend, "fixed_iters": FIXED_ITERS[torch.float32],
                         "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else " ".join(argv)},
              "results": results, "summary": summary, "seconds": time.perf_counter() - started}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return result


def config_name(args) -> str:
    return args.config or ("tiny" if args.smoke else "cifar10")


if __name__ == "__main__":
    main()
