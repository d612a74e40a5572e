"""The paper's Table 2 at CPU scale: the full `digits` model against uniform dequantization, affine coupling and no
self-attention, each parameter-matched to the full model as the official CIFAR-10 ablations were, trained with the
`make demo` settings for the same number of steps over several seeds; the EMA weights' test bits/dim on the 300 test
digits (one sample and importance-weighted).

    python experiments/ablations_digits.py --out results/ablations_digits [--seeds 0,1,2] [--steps 800] [--grad-clip 1]

One JSON per run (skipped when it exists, so an interrupted sweep resumes), then results/ablations_digits/table.md,
summary.json, widths.json and figures/ablations_digits.png from every JSON in the folder (`--report-only` rebuilds them).

Parameter matching. The official ablations widened the conditioners to keep the full model's parameter count:
uniform dequantization has no dequantizer, so its main flow went from 96 to 104 filters; affine coupling has much
smaller output convolutions, so both the main flow and the dequantizer went from 96 to 108; no self-attention keeps
96 with a maxout mixer of the same size. Here every ablation's widths are searched the same way: the main flow's
filters F and (where a dequantizer exists) its filters G are widened by a common factor from the digits' 32 and 16,
each rounded to a multiple of the 4 attention heads (G to either neighbour of 16 F / 32), and the pair whose total
parameter count is closest to the full model's is taken. `widths.json` lists every candidate, and also the
unconstrained closest pair.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OFFICIAL_CLIP_NATS, ROOT, load_runs, mean_and_stderr, parse_seeds, train_run, write_report

from flowpp.model import FlowPlusPlus, get_config

MODEL = "digits"
IMPORTANCE_SAMPLES = 16
# what each ablation changes, before the widths are matched
ABLATIONS = {
    "full": {},
    "uniform_dequantization": {"dequantizer": "uniform"},
    "affine_coupling": {"coupling": "affine"},
    "no_attention": {"mixer": "maxout", "dequant_mixer": "maxout"},
}
LABELS = {"full": "Flow++ (full)", "uniform_dequantization": "uniform dequantization",
          "affine_coupling": "affine coupling", "no_attention": "no self-attention"}
# the paper's Table 2 (CIFAR-10, bits/dim of unconverged models at the same step count)
PAPER = {"full": 3.165, "uniform_dequantization": 3.292, "affine_coupling": 3.200, "no_attention": 3.193}
WIDTHS = range(8, 65, 4)  # main-flow filter counts searched: multiples of the 4 attention heads, up to twice 32
DEQUANT_WIDTHS = range(4, 97, 4)  # dequantizer filter counts of the unconstrained search


def count(overrides: dict) -> dict:
    "Parameters of the digits model with `overrides`: total, main flow, dequantizer."
    model = FlowPlusPlus(get_config(MODEL, **overrides))
    n = lambda m: sum(p.numel() for p in m.parameters())
    return {"total": n(model), "flow": n(model.flow), "dequantizer": n(model.dequantizer)}


def match_widths(name: str) -> dict:
    "The search of the module docstring: widths, parameter counts, every candidate, the unconstrained closest pair."
    base = get_config(MODEL)
    full = count({})["total"]
    change = ABLATIONS[name]
    has_dequantizer = change.get("dequantizer", base.dequantizer) != "uniform"
    # the main flow's count depends on F only and the dequantizer's on G only: count each part once per width
    flow = {F: count({**change, "filters": F})["flow"] for F in WIDTHS}
    dequant = {G: count({**change, "dequant_filters": G})["dequantizer"] for G in DEQUANT_WIDTHS}
    pair = lambda F, G: {"filters": F, "dequant_filters": G, "total": flow[F] + dequant[G], "flow": flow[F],
                         "dequantizer": dequant[G]}
    candidates = []
    for F in WIDTHS:
        if has_dequantizer:
            # G = F * (G0 / F0), rounded down and up to multiples of the heads
            g = F * base.dequant_filters / base.filters
            gs = sorted({max(4, 4 * math.floor(g / 4)), max(4, 4 * math.ceil(g / 4))})
        else:
            gs = [base.dequant_filters]  # unused: no dequantizer network
        candidates += [pair(F, G) for G in gs]
    best = min(candidates, key=lambda c: (abs(c["total"] - full), c["filters"]))
    free = None
    if has_dequantizer:  # every (F, G) pair, for the record
        free = min((pair(F, G) for F in WIDTHS for G in DEQUANT_WIDTHS), key=lambda c: abs(c["total"] - full))
    overrides = dict(change)
    if best["filters"] != base.filters:
        overrides["filters"] = best["filters"]
    if has_dequantizer and best["dequant_filters"] != base.dequant_filters:
        overrides["dequant_filters"] = best["dequant_filters"]
    whole = count(overrides)
    assert whole == {k: best[k] for k in whole}, (name, whole, best)  # the parts add up to the model that is trained
    return {"variant": name, "model_overrides": overrides, "filters": best["filters"],
            "dequant_filters": best["dequant_filters"] if has_dequantizer else None,
            "parameters": best["total"], "parameters_flow": best["flow"], "parameters_dequantizer": best["dequantizer"],
            "difference": best["total"] - full, "relative_difference": (best["total"] - full) / full,
            "candidates_near": sorted(candidates, key=lambda c: abs(c["total"] - full))[:6],
            "unconstrained_closest": free}


def run_name(steps: int, name: str, seed: int) -> str:
    return f"steps{steps}_{name}_seed{seed}.json"


def summarize(runs: list[dict]) -> list[dict]:
    "One row per (steps, variant): mean and standard error over seeds; the difference from the full model."
    iw = f"test_bpd_iw{IMPORTANCE_SAMPLES}"
    rows = []
    for steps in sorted({r["steps"] for r in runs}):
        groups = {name: sorted((r for r in runs if r["steps"] == steps and r["variant"] == name), key=lambda r: r["seed"])
                  for name in ABLATIONS}
        full = groups["full"]
        for name, group in groups.items():
            if not group:
                continue
            bpd = [r["test_bpd"] for r in group]
            mean, se = mean_and_stderr(bpd)
            iw_mean, iw_se = mean_and_stderr([r[iw] for r in group])
            row = {"variant": name, "label": LABELS[name], "steps": steps, "seeds": [r["seed"] for r in group],
                   "model_overrides": group[0]["model_overrides"], "parameters": group[0]["parameters"],
                   "parameters_flow": group[0]["parameters_flow"],
                   "parameters_dequantizer": group[0]["parameters_dequantizer"],
                   "test_bpd_mean": mean, "test_bpd_stderr": se, "test_bpd_by_seed": bpd,
                   f"{iw}_mean": iw_mean, f"{iw}_stderr": iw_se, f"{iw}_by_seed": [r[iw] for r in group],
                   "grad_clip_nats": group[0]["grad_clip_nats"],
                   "clipped_fraction_mean": sum(r["clipped_fraction"] for r in group) / len(group),
                   "wall_seconds_mean": sum(r["wall_seconds"] for r in group) / len(group),
                   "train_seconds_mean": sum(r["train_seconds"] for r in group) / len(group),
                   "nonfinite_steps": sum(r["nonfinite_steps"] for r in group),
                   "paper_cifar10_bpd": PAPER[name], "paper_difference": round(PAPER[name] - PAPER["full"], 3)}
            if full:
                f_mean, f_se = mean_and_stderr([r["test_bpd"] for r in full])
                fi_mean, fi_se = mean_and_stderr([r[iw] for r in full])
                row.update(parameters_difference=row["parameters"] - full[0]["parameters"],
                           difference_mean=mean - f_mean,
                           # independent samples: the two standard errors add in quadrature
                           difference_stderr=math.hypot(se, f_se) if name != "full" else 0.0,
                           **{f"{iw}_difference_mean": iw_mean - fi_mean,
                              f"{iw}_difference_stderr": math.hypot(iw_se, fi_se) if name != "full" else 0.0})
                paired = [a["test_bpd"] - b["test_bpd"] for a in group for b in full if a["seed"] == b["seed"]]
                if name != "full" and len(paired) > 1:
                    row["paired_difference_mean"], row["paired_difference_stderr"] = mean_and_stderr(paired)
            rows.append(row)
    return rows


def table(rows: list[dict], widths: dict, commands: list[str]) -> str:
    iw = f"test_bpd_iw{IMPORTANCE_SAMPLES}"
    lines = ["| variant | F / G | parameters (vs full) | test bits/dim, mean ± s.e. | difference from full | "
             f"IW-{IMPORTANCE_SAMPLES} mean ± s.e. | IW-{IMPORTANCE_SAMPLES} difference | each seed (1 sample) | "
             "paper CIFAR-10 | paper difference | steps | seeds | wall s per run |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        w = widths.get(r["variant"], {})
        fg = f"{w.get('filters', '?')} / {w.get('dequant_filters') or '-'}"
        dp = r.get("parameters_difference", 0)
        params = f"{r['parameters']:,}" + (f" ({dp:+,}, {100 * dp / (r['parameters'] - dp):+.2f}%)" if r["variant"] != "full" else "")
        diff = f"{r['difference_mean']:+.4f} ± {r['difference_stderr']:.4f}" if r["variant"] != "full" and "difference_mean" in r else "-"
        iw_diff = f"{r[iw + '_difference_mean']:+.4f} ± {r[iw + '_difference_stderr']:.4f}" if r["variant"] != "full" and iw + "_difference_mean" in r else "-"
        paper_diff = f"{r['paper_difference']:+.3f}" if r["variant"] != "full" else "-"
        lines.append(f"| {r['label']} | {fg} | {params} | {r['test_bpd_mean']:.4f} ± {r['test_bpd_stderr']:.4f} | {diff} | "
                     f"{r[iw + '_mean']:.4f} ± {r[iw + '_stderr']:.4f} | {iw_diff} | "
                     f"{', '.join(f'{v:.4f}' for v in r['test_bpd_by_seed'])} | {r['paper_cifar10_bpd']:.3f} | {paper_diff} | "
                     f"{r['steps']} | {len(r['seeds'])} | {r['wall_seconds_mean']:.0f} |")
    clip = rows[0]["grad_clip_nats"]
    notes = [
        "", "F / G: filters of the main flow's and of the dequantizer's conditioners (the full `digits` model: 32 / 16). "
        "Test bits/dim of the EMA weights on the 300 test digits, one dequantization sample (as `make demo` reports "
        f"it) and importance-weighted with {IMPORTANCE_SAMPLES} samples; mean ± standard error over seeds (sample "
        "standard deviation / sqrt(seeds)); the difference's standard error adds the two in quadrature. Training: "
        f"`flowpp.cli.DEMO_SETTINGS` (batch 64, lr 2e-3, warm-up 100, EMA 0.995), gradient clipped at {clip:g} "
        "nats per image, the same number of steps for every variant, one CPU thread. The paper's numbers are its "
        "CIFAR-10 Table 2 (unconverged models at the same step count).", "", "The commands that made the runs "
        "(each run is one JSON file; a command skips the runs whose file exists):", "", "```bash", *commands, "```", ""]
    return "\n".join(lines + notes)


def draw(rows: list[dict]):
    "The figure: each seed's test bits/dim per variant, and each removal's cost beside the paper's."
    import matplotlib.pyplot as plt
    steps = max(r["steps"] for r in rows)
    rows = [r for r in rows if r["steps"] == steps]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(rows):
        ax0.scatter([i] * len(r["test_bpd_by_seed"]), r["test_bpd_by_seed"], color=f"C{i}", alpha=0.5, s=18)
        ax0.errorbar([i + 0.15], [r["test_bpd_mean"]], yerr=[2 * r["test_bpd_stderr"]], fmt="o", color=f"C{i}", capsize=4)
    ax0.set_xticks(range(len(rows)), [r["label"].replace(" ", "\n", 1) for r in rows], fontsize=8)
    ax0.set_ylabel("test bits/dim (EMA, 1 sample)")
    ax0.set_title(f"digits, {steps} steps: each seed, mean ± 2 s.e.", fontsize=10)
    ax0.grid(alpha=0.3, axis="y")
    abl = [r for r in rows if r["variant"] != "full" and "difference_mean" in r]
    x = range(len(abl))
    ax1.bar([i - 0.2 for i in x], [r["difference_mean"] for r in abl], 0.4,
            yerr=[2 * r["difference_stderr"] for r in abl], capsize=4, color="C0", label="ours, digits (± 2 s.e.)")
    ax1.bar([i + 0.2 for i in x], [r["paper_difference"] for r in abl], 0.4, color="C7", label="paper, CIFAR-10")
    ax1.axhline(0, color="k", lw=0.8)
    ax1.set_xticks(list(x), [r["label"].replace(" ", "\n", 1) for r in abl], fontsize=8)
    ax1.set_ylabel("bits/dim minus the full model's")
    ax1.set_title("cost of each removal", fontsize=10)
    ax1.legend(fontsize=8); ax1.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def report(out: Path, figure_path: Path) -> list[dict]:
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    runs = [r for r in load_runs(out) if "variant" in r]
    if not runs:
        raise SystemExit(f"no finished runs in {out}")
    widths = json.loads((out / "widths.json").read_text())
    rows = summarize(runs)
    commands = sorted({r["command"] for r in runs})
    write_report(out, {"rows": rows, "commands": commands, "environment": runs[0]["environment"]},
                 table(rows, widths, commands), draw(rows), figure_path)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "ablations_digits")
    p.add_argument("--seeds", default="0,1,2", help="'0,1,2' or '0-4'")
    p.add_argument("--steps", type=int, default=800, help="training steps per run, the same for every variant")
    p.add_argument("--grad-clip", type=float, default=OFFICIAL_CLIP_NATS,
                   help="threshold on the nats-per-image gradient norm (results/clipping_digits)")
    p.add_argument("--variants", default=",".join(ABLATIONS), help=f"a subset of {','.join(ABLATIONS)}")
    p.add_argument("--figure", type=Path, default=ROOT / "figures" / "ablations_digits.png")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table, summary and figure")
    args = p.parse_args(argv)
    names = args.variants.split(",")
    unknown = set(names) - set(ABLATIONS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(ABLATIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    widths = {name: match_widths(name) for name in ABLATIONS}
    (args.out / "widths.json").write_text(json.dumps(widths, indent=1) + "\n")
    if not args.report_only:
        for seed in parse_seeds(args.seeds):  # seed by seed, so a partial sweep compares the variants on equal seeds
            for name in names:
                path = args.out / run_name(args.steps, name, seed)
                if path.exists():
                    print(f"skip {path.name}: done")
                    continue
                t0 = time.perf_counter()
                w = widths[name]
                r = train_run(path, seed=seed, steps=args.steps, grad_clip=args.grad_clip,
                              model_overrides=w["model_overrides"], importance_samples=IMPORTANCE_SAMPLES,
                              extra={"experiment": "ablations_digits", "variant": name})
                print(f"{path.name}: {r['parameters']:,} parameters, test {r['test_bpd']:.4f} bits/dim, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
    report(args.out, args.figure)


if __name__ == "__main__":
    main()
