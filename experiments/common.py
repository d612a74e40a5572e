"""What the digits experiments share: one training run of the `make demo` settings for a fixed number of steps,
written as one JSON file, and the statistics over seeds that the tables report.

A run is deterministic given its seed, the step budget, the machine and the torch version: the budget is in steps
(never seconds), training uses one thread, and evaluation runs on its own seeded random stream.
"""
from __future__ import annotations

import os

# one thread, set before torch starts its pools (the machine is shared; one training process at a time)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json
import math
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing flowpp
    sys.path.insert(0, str(ROOT))

import torch

from flowpp.cli import DEMO_SETTINGS
from flowpp.train import TrainConfig, Trainer, evaluate

torch.set_num_threads(1)

SCHEMA = "flowpp-digits-experiment-v1"
DIGITS_DIMS = 64  # D: the digits are 1 x 8 x 8
# the previous default clipped the bits/dim gradient at 1.0; the bits/dim loss is the nats-per-image loss divided by
# D ln 2, so that threshold is D ln 2 = 44.36 in nats per image
OLD_CLIP_NATS = round(DIGITS_DIMS * math.log(2), 2)
OFFICIAL_CLIP_NATS = 1.0  # the official code's threshold on the nats-per-image gradient
TRAIN_CURVE_WINDOW = 25  # steps averaged per point of the stored training curve


def environment() -> dict:
    "The facts a rerun must match to reproduce a run's numbers exactly."
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
            "torch_threads": torch.get_num_threads(), "commit": git("rev-parse", "HEAD"),
            "flowpp_modified": bool(git("status", "--porcelain", "--", "flowpp"))}


def command_line() -> str:
    "The command that ran this script, relative to the repository root."
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    "The per-step training lines and the evaluation lines of a metrics.jsonl."
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    return [l for l in lines if "grad_norm" in l], [l for l in lines if "test_bpd" in l]


def train_run(out_json: Path, *, seed: int, steps: int, grad_clip: float, model_overrides: dict | None = None,
              importance_samples: int = 0, runs_dir: Path = ROOT / "runs" / "experiments", extra: dict | None = None) -> dict:
    """Train the `make demo` settings for `steps` steps with the given clip and model changes; evaluate the EMA
    weights on the 300 test digits (one sample, and importance-weighted if asked); write `out_json`."""
    work = runs_dir / out_json.parent.name / out_json.stem
    if work.exists():
        shutil.rmtree(work)  # a fresh run: never a resume
    config = TrainConfig(**{**DEMO_SETTINGS, "max_steps": steps, "max_seconds": None, "seed": seed,
                            "grad_clip": grad_clip, "model_overrides": dict(model_overrides or {}),
                            "log_every": 1,  # every step's gradient norm is read (the clipped fraction)
                            "out_dir": str(work), "device": "cpu", "progress": False})
    t0 = time.perf_counter()
    trainer = Trainer(config)
    summary = trainer.train()
    result = {"bpd": summary["test_bpd"], "stderr": summary["test_bpd_stderr"], "n": summary["test_images"]}
    iw = None
    if importance_samples > 1:
        t_iw = time.perf_counter()
        torch.manual_seed(0)  # as run_demo does
        iw = evaluate(trainer.ema, trainer.test_set, config.eval_batch_size, num_samples=importance_samples)
        iw["seconds"] = time.perf_counter() - t_iw
    wall = time.perf_counter() - t0
    train_lines, eval_lines = read_metrics(work / "metrics.jsonl")
    assert len(train_lines) == steps and eval_lines, f"expected {steps} step lines and an evaluation in {work}"
    norms = torch.tensor([l["grad_norm"] for l in train_lines], dtype=torch.float64)
    train_bpd = torch.tensor([l["train_bpd"] for l in train_lines], dtype=torch.float64)
    windows = train_bpd[: len(train_bpd) // TRAIN_CURVE_WINDOW * TRAIN_CURVE_WINDOW].view(-1, TRAIN_CURVE_WINDOW)
    q = lambda p: norms.quantile(p).item()
    record = {
        "schema": SCHEMA, "seed": seed, "steps": summary["steps"], "grad_clip_nats": grad_clip,
        "model_overrides": config.model_overrides,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "parameters_flow": sum(p.numel() for p in trainer.model.flow.parameters()),
        "parameters_dequantizer": sum(p.numel() for p in trainer.model.dequantizer.parameters()),
        "test_bpd": result["bpd"], "test_bpd_stderr": result["stderr"], "test_images": result["n"],
        **({f"test_bpd_iw{importance_samples}": iw["bpd"], f"test_bpd_iw{importance_samples}_stderr": iw["stderr"],
            f"iw{importance_samples}_seconds": iw["seconds"]} if iw else {}),
        # clip_grad_norm_ rescales when the norm exceeds max_norm (0: no clipping)
        "clipped_fraction": (norms > grad_clip).double().mean().item() if grad_clip > 0 else 0.0,
        "fraction_above": {str(t): (norms > t).double().mean().item() for t in (OFFICIAL_CLIP_NATS, OLD_CLIP_NATS)},
        "grad_norm_nats": {"first": norms[0].item(), "median": q(0.5), "p10": q(0.1), "p90": q(0.9),
                           "max": norms.max().item(), "last_100_median": norms[-100:].median().item()},
        "grad_norm_trace": [float(f"{v:.4g}") for v in norms.tolist()],
        "train_bpd_curve": {"window": TRAIN_CURVE_WINDOW, "mean": [round(v, 5) for v in windows.mean(1).tolist()]},
        "nonfinite_steps": summary["nonfinite_steps"],
        "train_seconds": summary["train_seconds"], "init_seconds": summary.get("init_seconds"),
        "first_step_seconds": summary.get("first_step_seconds"), "wall_seconds": wall,
        "train_config": {k: v for k, v in asdict(config).items() if k not in ("out_dir", "progress")},
        "environment": environment(), "command": command_line(), **(extra or {}),
    }
    write_json_atomic(out_json, record)  # a JSON file exists only for a finished run
    shutil.rmtree(work)  # the checkpoint and samples are not kept
    return record


def write_json_atomic(path: Path, obj) -> None:
    "`obj` as indented JSON at `path`, written to a temporary file and renamed: a reader never sees half a file."
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def write_report(out: Path, summary: dict, table_md: str, fig, figure_path: Path) -> None:
    "An experiment's report: `summary.json` and `table.md` in `out`, the figure at `figure_path`; the table printed."
    import matplotlib.pyplot as plt
    from flowpp.core import save_figure
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.md").write_text(table_md)
    save_figure(fig, figure_path)
    plt.close(fig)
    print(table_md)


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    "Mean and standard error of the mean (sample standard deviation / sqrt(n)); nan error for one value."
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def load_runs(folder: Path) -> list[dict]:
    "Every finished run's JSON in `folder`."
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return [r for r in records if isinstance(r, dict) and r.get("schema") == SCHEMA]


def parse_seeds(text: str) -> list[int]:
    "'0,1,2' or '0-4' -> a list of seeds."
    if "-" in text:
        lo, hi = map(int, text.split("-"))
        return list(range(lo, hi + 1))
    return [int(s) for s in text.split(",") if s.strip()]
