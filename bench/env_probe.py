"""The machine a benchmark ran on, as JSON: nvidia-smi's view of the GPU, torch / Triton / CUDA / cuDNN versions, the
device's properties, and two measured ceilings: a bfloat16 matmul on random data (TFLOP/s) and a device-to-device
copy (GB/s, bytes read plus written).

    python3 bench/env_probe.py --out env.json            # a GPU: 8192^3 bf16 matmuls, 2 GiB copies
    python3 bench/env_probe.py --smoke --out env.json    # a CPU: float32 512^3 matmuls, 64 MiB copies
"""
from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import torch  # noqa: E402

SCHEMA = "flowpp-env-v1"
SMI_FIELDS = ("name", "driver_version", "memory.total", "memory.used", "clocks.sm", "clocks.max.sm", "clocks.mem",
              "power.draw", "power.limit", "temperature.gpu", "utilization.gpu", "persistence_mode", "mig.mode.current")


def nvidia_smi() -> dict:
    "nvidia-smi's reading of each GPU (a query only: nothing on the card is changed)."
    if shutil.which("nvidia-smi") is None:
        return {"available": False}
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": False, "error": str(e)}
    gpus = [dict(zip(SMI_FIELDS, (v.strip() for v in line.split(",")))) for line in out.stdout.strip().splitlines()]
    return {"available": out.returncode == 0, "gpus": gpus, "stderr": out.stderr.strip()[:500]}


def versions() -> dict:
    "Installed versions of the packages the stages use (package metadata only: nothing is imported)."
    from importlib import metadata
    found = {}
    for name in ("numpy", "triton", "papermill", "nbclient", "ipykernel", "matplotlib", "scikit-learn", "tqdm"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="CPU-sized ceilings (seconds)")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    device = benchlib.pick_device("cpu" if args.smoke and args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    result = {"schema": SCHEMA, "device": benchlib.device_info(device), "card": benchlib.card_slug(device),
              "platform": platform.platform(), "nvidia_smi": nvidia_smi(), "packages": versions(),
              "command": benchlib.command_line()}
    if gpu:
        props = torch.cuda.get_device_properties(device)
        result["device_properties"] = {k: getattr(props, k) for k in dir(props)
                                       if not k.startswith("_") and isinstance(getattr(props, k), (int, float, str, bool))}
    result["matmul"] = benchlib.peak_matmul_tflops(device, 8192 if gpu else 512, 10 if gpu else 3)
    result["copy"] = benchlib.copy_bandwidth(device, 2 * benchlib.GIB if gpu else 64 * 2 ** 20, 10 if gpu else 3)
    result["seconds"] = time.perf_counter() - t0
    benchlib.write_json(args.out, result)
    print(f"{result['device']['name']} ({result['card']}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"triton {result['device']['triton']}: matmul {result['matmul']['tflops']:.3g} TFLOP/s "
          f"({result['matmul']['dtype']}), copy {result['copy']['gb_per_s']:.0f} GB/s -> {args.out}", flush=True)
    return result


if __name__ == "__main__":
    main()
