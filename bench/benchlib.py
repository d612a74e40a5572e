"""What the benchmark scripts of bench/ share: device facts, timing (CUDA events on a GPU, synchronised once at the end
of a timed loop), peak memory, measured matmul and copy ceilings, FLOP counting, one profiled step (top GPU kernels,
GPU-busy time against wall time, kernel launches), and JSON written atomically.

Imported by bench/run.py, bench/port_bench.py, bench/proxies.py and bench/env_probe.py; it needs only torch and numpy.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
GIB = 2 ** 30
CIFAR10_FIXTURE = ROOT / "nbs" / "fixtures" / "cifar10_test_64.npz"
TOP_KERNELS = 25  # rows of the profiler table kept in the JSON
KERNEL_NAME_CHARS = 160  # generated kernel names can be very long; the table keeps their start


# ----------------------------------------------------------------------------------------------------------
# device facts

def pick_device(name: str = "auto") -> torch.device:
    "'auto' -> cuda when available, else cpu; anything else as given."
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


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
    "The device, the software stack and the switches that change what a kernel computes."
    info = {"type": device.type, "name": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / GIB, 1),
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                    l2_cache_mib=round(getattr(props, "L2_cache_size", 0) / 2 ** 20, 1),
                    cudnn_benchmark=torch.backends.cudnn.benchmark,
                    sdpa={"flash": torch.backends.cuda.flash_sdp_enabled(),
                          "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                          "math": torch.backends.cuda.math_sdp_enabled()})
    info["inductor_caches_disabled"] = os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "") == "1"
    info["inductor_cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return info


def card_slug(device: torch.device) -> str:
    "A short name of the device for file names: 'cpu', or the GPU's model, e.g. 'NVIDIA H200' -> 'h200'."
    return gpu_slug(device_name(device)) if device.type == "cuda" else "cpu"


def gpu_slug(name: str) -> str:
    "'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA A100-SXM4-80GB' -> 'a100'; 'gpu' if none fits."
    import re
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    return match.group(1).lower() if match else "gpu"


# ----------------------------------------------------------------------------------------------------------
# timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device: torch.device) -> float:
    "Wall-clock seconds of one call, synchronised before and after (warm-up, compilation, sampling)."
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_loop(fn, iters: int, device: torch.device) -> float:
    "Seconds for `iters` back-to-back calls: CUDA events around the loop and one synchronisation at its end on a GPU; perf_counter on a CPU."
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


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    "GPU: torch.cuda.max_memory_allocated since the last reset. CPU: the process's peak resident set size."
    if device.type == "cuda":
        b = torch.cuda.max_memory_allocated(device)
        return {"bytes": b, "gib": b / GIB, "kind": "torch.cuda.max_memory_allocated since the reset before training"}
    b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"bytes": b, "gib": b / GIB, "kind": "CPU: peak resident set size of the whole benchmark process so far "
                                                 "(includes Python, torch and the data, not only the training step)"}


def peak_matmul_tflops(device: torch.device, size: int, reps: int) -> dict:
    "Measured ceiling: a square matmul on random data after warm-up, bfloat16 on a GPU, float32 on a CPU."
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    seconds = time_loop(lambda: a @ b, reps, device)
    return {"tflops": 2 * size ** 3 * reps / seconds / 1e12, "dtype": str(dtype).replace("torch.", ""), "size": size,
            "reps": reps, "data": "random normal"}


def copy_bandwidth(device: torch.device, nbytes: int, reps: int) -> dict:
    "Measured ceiling: device-to-device copy of `nbytes` (random data), counting bytes read plus bytes written."
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = time_loop(lambda: dst.copy_(src), reps, device)
    moved = 2 * src.numel() * 4 * reps
    return {"gb_per_s": moved / seconds / 1e9, "bytes_per_copy": src.numel() * 4, "reps": reps,
            "counted": "bytes read + bytes written"}


# ----------------------------------------------------------------------------------------------------------
# FLOPs

def flop_count(fn) -> dict:
    "Matmul/convolution/attention FLOPs of fn() (torch.utils.flop_counter; elementwise work is not counted), by op."
    from torch.utils import flop_counter
    aten = torch.ops.aten
    custom = {}  # the CPU flash-attention kernels have no formula in torch's table
    if hasattr(flop_counter, "sdpa_flop_count"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = \
            lambda q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v)
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = \
            lambda go, q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_backward_flop_count(go, q, k, v)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=custom) as fc:
        fn()
    return {"total": fc.get_total_flops(), "by_op": {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}}


# ----------------------------------------------------------------------------------------------------------
# one profiled step

def _union_us(intervals: list[tuple[float, float]]) -> float:
    "Length of the union of [start, end] intervals (microseconds): time in which at least one of them ran."
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def profile_steps(fn, device: torch.device, steps: int = 1, top: int = TOP_KERNELS) -> dict:
    """Run fn() `steps` times under torch.profiler and describe what the device ran.

    On a GPU: every CUDA activity the profiler saw (kernels, memcpy, memset), grouped by name with GPU ms and calls
    per step; `gpu_busy_ms_per_step` is the time in which at least one of them ran (the union of their intervals);
    `wall_ms_per_step` the host's wall clock over the profiled steps, synchronised at the end (the profiler's own
    overhead included; the timed loop's step time is the unprofiled figure). On a CPU the same table is made of the
    ATen operations that have no ATen operation below them (and inductor's `cpp_fused_*` kernels where the profile
    marks them), with self CPU time; busy time is the union of their intervals.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.events()
    if cuda:
        items = [e for e in events if e.device_type == DeviceType.CUDA]
        kind = "CUDA activities (kernels, memcpy, memset) seen by the profiler"
        durations = {id(e): e.time_range.end - e.time_range.start for e in items}
        launches = Counter(e.name for e in events if e.device_type == DeviceType.CPU
                           and e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                                          "cuLaunchKernelEx", "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync"))
    else:
        def kernelish(e):
            return e.name.startswith("aten::") or "cpp_fused" in e.name
        items = [e for e in events if e.device_type == DeviceType.CPU and kernelish(e)
                 and not any(kernelish(c) for c in e.cpu_children)]
        kind = "CPU: leaf ATen operations and inductor cpp kernels (self CPU time)"
        durations = {id(e): e.self_cpu_time_total for e in items}
        launches = Counter()
    by_name: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for e in items:
        by_name[e.name][0] += durations[id(e)]
        by_name[e.name][1] += 1
    busy_us = _union_us([(e.time_range.start, e.time_range.end) for e in items])
    rows = sorted(by_name.items(), key=lambda kv: -kv[1][0])
    kernels = sum(n for name, (_, n) in by_name.items() if not name.startswith(("Memcpy", "Memset")))
    return {
        "kind": kind, "steps": steps,
        "wall_ms_per_step": 1000 * wall / steps,
        "gpu_busy_ms_per_step" if cuda else "busy_ms_per_step": busy_us / 1000 / steps,
        "kernels_per_step": kernels / steps,
        "activities_per_step": len(items) / steps,
        "distinct_kernels": len(by_name),
        "host_launch_calls_per_step": {k: v / steps for k, v in launches.items()},
        "top": [{"name": name[:KERNEL_NAME_CHARS], "ms_per_step": us / 1000 / steps, "calls_per_step": n / steps,
                 "share_of_busy": us / busy_us if busy_us else None} for name, (us, n) in rows[:top]],
    }



def profile_figures(prof: dict, train_step_ms: float | None) -> dict:
    "The headline figures of a profile_steps result; the busy fraction is taken of the timed step when there is one."
    busy = prof.get("gpu_busy_ms_per_step", prof.get("busy_ms_per_step"))
    return dict(profile_kernels_per_step=prof["kernels_per_step"], profile_busy_ms_per_step=busy,
                profile_wall_ms_per_step=prof["wall_ms_per_step"],
                profile_busy_fraction_of_step=busy / train_step_ms if train_step_ms and busy is not None else None)


# ----------------------------------------------------------------------------------------------------------
# data and output

def cifar10_fixture() -> torch.Tensor:
    "The 64 real CIFAR-10 test images of the fixture, uint8 (64, 3, 32, 32)."
    return torch.from_numpy(np.load(CIFAR10_FIXTURE)["x"]).permute(0, 3, 1, 2).contiguous()


def tile(x: torch.Tensor, n: int) -> torch.Tensor:
    "The first n images of x repeated as often as needed."
    return x.repeat(math.ceil(n / len(x)), *([1] * (x.dim() - 1)))[:n].contiguous()


def images_for(config, n: int, seed: int = 0) -> torch.Tensor:
    "n uint8 images a model config accepts: the real CIFAR-10 fixture for 32x32x3, else random pixels."
    if tuple(config.image_shape) == (3, 32, 32) and config.num_levels == 256:
        return tile(cifar10_fixture(), n)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.num_levels, (n, *config.image_shape), generator=g, dtype=torch.uint8)


def write_json(path: str | Path, obj) -> Path:
    "Write obj as JSON atomically (a temporary file renamed), so a killed run never leaves half a file."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def command_line() -> str:
    return "python3 " + " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "-", *sys.argv[1:]])


def run_phases(run, phases: list[str]) -> list[str]:
    """Call `run.<phase>()` for each phase in order, saving `run.result` after each; a phase that fails is recorded
    (its error in `errors`) and the later phases still run. Returns the failed phases."""
    failed = []
    for phase in phases:
        t0 = time.perf_counter()
        try:
            getattr(run, phase)()
            run.result["phases_done"].append(phase)
        except Exception as e:
            failed.append(phase)
            run.result["errors"][phase] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        run.result.setdefault("phase_seconds", {})[phase] = time.perf_counter() - t0
        run.save()
        print(f"[{run.result['label']}] {phase}: {time.perf_counter() - t0:.1f} s"
              + (f" FAILED ({run.result['errors'][phase]})" if phase in failed else ""), flush=True)
    run.result["complete"] = not failed
    run.save()
    return failed


def settle_args(parser, args, defaults: dict, phases: tuple[str, ...]):
    """Fill the options left at None from `defaults`, run a smoke run on the CPU unless a device was named, and turn
    `--phases a,b` into a list in `phases`' order (an unknown name is a parser error)."""
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.smoke and args.device == "auto":
        args.device = "cpu"
    asked = [x.strip() for x in args.phases.split(",") if x.strip()]
    if unknown := [x for x in asked if x not in phases]:
        parser.error(f"unknown phases {unknown}; choose from {phases}")
    args.phases = [x for x in phases if x in asked]  # always in the phases' order
    return args
