"""Helpers of bench/gpu_run.sh: the papermill parameters of the `main` and `ablations` stages, the tiny CIFAR-10 shards
of the smoke run, packing a stage's files into DIR/<stage>.json (its key figures) and DIR/<stage>.tar.gz (everything),
and the summary table.

    python3 bench/stages.py params main|ablations [--smoke] --work W --data D [--run NAME] [--param K=V] --out params.json
    python3 bench/stages.py check-params --param K=V ...
    python3 bench/stages.py smoke-data DIR
    python3 bench/stages.py pack STAGE --work W/STAGE --out DIR --status ok|failed|timeout|skipped --seconds S --limit L
    python3 bench/stages.py summary DIR

Only the standard library and numpy: it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import shutil
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("env", "bench", "port", "main", "ablations", "kernels", "scopes")
ABLATIONS = {"uniform_dequantization": "cifar10_uniform_dequant", "affine_coupling": "cifar10_affine",
             "no_attention": "cifar10_no_attention"}
# the smoke run's models: every named config shrunk alike (the switch that names an ablation is kept)
SMOKE_MODEL = {"filters": 8, "blocks": 1, "components": 4, "heads": 2, "stages": ["stripes:2", "squeeze", "channels:1"],
               "dequant_filters": 8, "dequant_blocks": 1, "context_channels": 4, "context_blocks": 1,
               "dequant_stages": ["stripes:1"]}
PROTOCOL = ROOT / "nbs" / "experiments" / "cifar10_budget.ipynb"
STAGE_OWNED = {"data_path", "runs", "results_dir", "runs_dir"}  # where the stage reads and writes, and which runs


def protocol_parameters(notebook: Path = PROTOCOL) -> set[str]:
    "The names the protocol notebook's papermill parameters cell assigns, less those the stages set themselves."
    cells = json.loads(notebook.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    return names - STAGE_OWNED


def parse_params(items: list[str]) -> dict:
    "--param K=V items as {K: V}, V read as JSON; K must be a parameter of the protocol notebook."
    known, out = protocol_parameters(), {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--param {item!r}: expected NAME=VALUE with NAME one of the protocol's parameters "
                             f"({', '.join(sorted(known))})")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            raise SystemExit(f"--param {item!r}: the value must be JSON (false, not False; strings in double quotes)")
    return out


def params(stage: str, smoke: bool, work: Path, runs: list[str], data: Path, extra: dict | None = None) -> dict:
    "Papermill parameters of nbs/experiments/cifar10_budget.ipynb for the main run or the ablations; `extra` last."
    p = dict(data_path=str(data), dataset="cifar10", runs=runs, results_dir=str(work / "cifar10_budget"),
             runs_dir=str(work / "runs"))
    if smoke:  # seconds on a CPU: tiny models, two steps, a few test images
        p.update(model_overrides=SMOKE_MODEL, max_steps=2, batch_size=8, lr=1e-3, warmup_steps=1, eval_limit=16,
                 importance_samples=2, num_sample_images=8, device="cpu")
    else:  # the protocol as it is (cifar10_budget.ipynb's defaults), on the GPU
        p.update(device="cuda")
    return {**p, **(extra or {})}


def smoke_data(folder: Path) -> Path:
    "A CIFAR-10 folder of the shard layout from the 64 real test images of nbs/fixtures (train_00.npz, test_first1000.npz)."
    import numpy as np
    folder.mkdir(parents=True, exist_ok=True)
    f = np.load(ROOT / "nbs" / "fixtures" / "cifar10_test_64.npz")
    np.savez(folder / "train_00.npz", x=f["x"], y=f["y"]) if "y" in f.files else np.savez(folder / "train_00.npz", x=f["x"])
    np.savez(folder / "test_first1000.npz", x=f["x"][:32])
    return folder


# ----------------------------------------------------------------------------------------------------------
# packing

def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def recover_runs(work: Path) -> list[str]:
    """Runs that a time limit cut before the protocol collected them: what they wrote so far (metrics.jsonl, the
    metrics.json of the checks that ran, sample grids) copied into the results, and their protocol entry marked cut."""
    recovered = []
    runs_dir, results = work / "runs", work / "cifar10_budget"
    if not runs_dir.is_dir():
        return recovered
    protocol = _load(results / "protocol.json") or {"runs": {}}
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        keep = results / run.name
        entry = protocol["runs"].get(run.name)
        collected = entry.get("status") == "done" if entry and "status" in entry else (keep / "metrics.json").exists()
        if collected or not (run / "metrics.jsonl").exists():
            continue
        keep.mkdir(parents=True, exist_ok=True)
        for f in ["metrics.jsonl", "metrics.json", "samples.png", "loss_curve.png", *(p.name for p in run.glob("samples_*.png"))]:
            if (run / f).exists():
                shutil.copy(run / f, keep / f)
        if entry is not None:
            entry["status"] = "cut"
        recovered.append(run.name)
    if recovered and protocol["runs"]:
        (results / "protocol.json").write_text(json.dumps(protocol, indent=2))
    return recovered


def stage_figures(stage: str, work: Path) -> dict:
    "What a stage measured, gathered from its files into one JSON object."
    if stage == "env":
        return _load(work / "env.json") or {}
    if stage in ("bench", "port"):
        return {p.stem: _load(p) for p in sorted(work.glob("*.json")) if not p.name.startswith("params")}
    if stage in ("kernels", "scopes"):
        return {p.stem: _load(p) for p in sorted(work.glob("*.json"))}
    # main, ablations: the protocol's collected results
    results = work / "cifar10_budget"
    recovered = recover_runs(work)  # first: it marks the cut runs in protocol.json
    out = {"protocol": _load(results / "protocol.json"), "runs": {}, "recovered_partial_runs": recovered}
    for run in sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []:
        log = _jsonl(run / "metrics.jsonl")
        out["runs"][run.name] = {"metrics": _load(run / "metrics.json"),
                                 "evaluations": [r for r in log if "test_bpd" in r],
                                 "last_train_line": next((r for r in reversed(log) if "train_bpd" in r), None)}
    return out


def pack(stage: str, work: Path, out: Path, status: str, seconds: float, limit: float) -> dict:
    "DIR/<stage>.json (status and figures) and DIR/<stage>.tar.gz (every file of the stage, logs included)."
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    figures = stage_figures(stage, work)
    record = {"stage": stage, "status": status, "seconds": round(seconds, 1), "limit_seconds": limit,
              "figures": figures, "tarball": f"{stage}.tar.gz", "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = out / f".{stage}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            rel = p.relative_to(work)
            # the protocol's run folders (checkpoints; their small files were collected) and the smoke data stay behind
            if p.is_file() and rel.parts[0] not in ("runs", "data") and p.suffix != ".pt" and p.stat().st_size < 12 * 2 ** 20:
                tar.add(p, arcname=str(Path(stage) / rel))
    tmp.replace(out / f"{stage}.tar.gz")
    tmp = out / f".{stage}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(out / f"{stage}.json")
    return record


# ----------------------------------------------------------------------------------------------------------
# summary

def _fmt(v, spec="{:.3g}"):
    return spec.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"


def headline(stage: str, figures: dict) -> str:
    "One line of what a stage measured."
    if not figures:
        return ""
    if stage == "env":
        m, c = figures.get("matmul", {}), figures.get("copy", {})
        return (f"{figures.get('device', {}).get('name', '?')}, torch {figures.get('device', {}).get('torch')}: "
                f"matmul {_fmt(m.get('tflops'))} TFLOP/s {m.get('dtype', '')}, copy {_fmt(c.get('gb_per_s'))} GB/s")
    if stage in ("bench", "port", "kernels", "scopes"):
        parts = []
        for name, r in figures.items():
            if not isinstance(r, dict) or "figures" not in r:
                continue
            f = r["figures"]
            parts.append(f"{r.get('label', name)}: {_fmt(f.get('train_images_per_second'), '{:.1f}')} img/s"
                         + ("" if r.get("complete") else " (partial)"))
        if stage == "kernels" and "kernels" in figures and isinstance(figures["kernels"], dict):
            parts.append("coupling kernels timed" if figures["kernels"].get("results") else "")
        for r in figures.values():  # compile_cost.py: each scope's first step (its compilation)
            if isinstance(r, dict) and r.get("schema") == "flowpp-compile-cost-v1":
                for scope, s in r.get("scopes", {}).items():
                    first = s.get("compile", {}).get("first_step_seconds")
                    parts.append(f"{scope} scope: {s['error']}" if "error" in s else
                                 f"{scope} scope: first step {_fmt(first, '{:.0f}')} s, "
                                 f"{s.get('trace', {}).get('fx_nodes_forward', '-')} forward nodes")
        return "; ".join(p for p in parts if p)
    runs = figures.get("runs", {})
    parts = []
    for name, r in runs.items():
        evals = r.get("evaluations") or []
        last = evals[-1] if evals else {}
        parts.append(f"{name}: {_fmt(last.get('test_bpd'), '{:.3f}')} bpd at {_fmt(last.get('train_seconds'), '{:.0f}')} s"
                     + ("" if r.get("metrics") else " (partial)"))
    return "; ".join(parts)


def summary(out: Path) -> str:
    rows = ["| stage | status | seconds | limit | measured |", "|---|---|---:|---:|---|"]
    found = {}
    for stage in STAGES:
        r = _load(out / f"{stage}.json")
        if r is None:
            continue
        found[stage] = {k: r.get(k) for k in ("status", "seconds", "limit_seconds")}
        rows.append(f"| {stage} | {r['status']} | {r['seconds']} | {r['limit_seconds']} | "
                    f"{headline(stage, r.get('figures') or {})[:300]} |")
    (out / "summary.json").write_text(json.dumps(found, indent=1) + "\n")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("params")
    a.add_argument("stage", choices=["main", "ablations"])
    a.add_argument("--smoke", action="store_true")
    a.add_argument("--work", required=True)
    a.add_argument("--data", required=True)
    a.add_argument("--run", action="append", default=[])
    a.add_argument("--param", action="append", default=[])
    a.add_argument("--out", required=True)
    a = sub.add_parser("check-params")
    a.add_argument("--param", action="append", default=[])
    a = sub.add_parser("smoke-data")
    a.add_argument("folder")
    a = sub.add_parser("pack")
    a.add_argument("stage", choices=STAGES)
    a.add_argument("--work", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--status", required=True)
    a.add_argument("--seconds", type=float, required=True)
    a.add_argument("--limit", type=float, required=True)
    a = sub.add_parser("summary")
    a.add_argument("out")
    a = sub.add_parser("ablation-runs")
    a.add_argument("spec", nargs="?", default="")
    args = ap.parse_args(argv)
    if args.cmd == "params":
        runs = args.run or (["main"] if args.stage == "main" else list(ABLATIONS))
        p = params(args.stage, args.smoke, Path(args.work), runs, Path(args.data), parse_params(args.param))
        Path(args.out).write_text(json.dumps(p, indent=1) + "\n")
    elif args.cmd == "check-params":
        parse_params(args.param)
    elif args.cmd == "smoke-data":
        smoke_data(Path(args.folder))
    elif args.cmd == "pack":
        r = pack(args.stage, Path(args.work), Path(args.out), args.status, args.seconds, args.limit)
        print(f"{args.stage}: {r['status']} in {r['seconds']} s -> {Path(args.out) / (args.stage + '.json')}, "
              f"{Path(args.out) / (args.stage + '.tar.gz')}", flush=True)
    elif args.cmd == "summary":
        print(summary(Path(args.out)))
    elif args.cmd == "ablation-runs":  # "uniform_dequantization,no_attention" or "" (all), checked
        names = [s for s in args.spec.split(",") if s] or list(ABLATIONS)
        if unknown := [s for s in names if s not in ABLATIONS]:
            sys.exit(f"unknown ablations {unknown}; choose from {list(ABLATIONS)}")
        print(" ".join(names))


if __name__ == "__main__":
    main()
