"""Gradient clipping on the digits: the `make demo` settings at a fixed step budget with the gradient of the loss in
nats per image clipped at the official 1.0, at the previous default (1.0 on the bits/dim gradient, i.e. D ln 2 = 44.36
nats per image for D = 64), and not at all; several seeds each; the EMA weights' test bits/dim on the 300 test digits.

    python experiments/clipping_digits.py --out results/clipping_digits [--seeds 0,1,2] [--steps 800] [--clips 1,44.36,0]

One JSON per run (skipped when it exists, so an interrupted sweep resumes), then results/clipping_digits/table.md,
summary.json and figures/clipping_digits.png from every JSON in the folder (`--report-only` rebuilds just those).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DIGITS_DIMS, OFFICIAL_CLIP_NATS, OLD_CLIP_NATS, ROOT, load_runs, mean_and_stderr,
                    parse_seeds, train_run, write_report)

NAMES = {OFFICIAL_CLIP_NATS: "official: 1.0 nats/image", OLD_CLIP_NATS: "previous: 1.0 bits/dim (44.36 nats/image)",
         0.0: "no clipping"}
IMPORTANCE_SAMPLES = 16


def run_name(steps: int, clip: float, seed: int) -> str:
    return f"steps{steps}_clip{clip:g}_seed{seed}.json"


def setting_name(clip: float) -> str:
    return NAMES.get(clip, f"clip {clip:g} nats/image")


def summarize(runs: list[dict]) -> list[dict]:
    "One row per (steps, clip): mean and standard error over seeds, and every seed's value."
    rows = []
    for steps, clip in sorted({(r["steps"], r["grad_clip_nats"]) for r in runs},
                              key=lambda k: (k[0], k[1] == 0, k[1])):
        group = sorted((r for r in runs if (r["steps"], r["grad_clip_nats"]) == (steps, clip)), key=lambda r: r["seed"])
        bpd = [r["test_bpd"] for r in group]
        iw = [r[f"test_bpd_iw{IMPORTANCE_SAMPLES}"] for r in group if f"test_bpd_iw{IMPORTANCE_SAMPLES}" in r]
        mean, se = mean_and_stderr(bpd)
        rows.append({
            "setting": setting_name(clip), "grad_clip_nats": clip,
            "grad_clip_bpd": clip / (DIGITS_DIMS * math.log(2)), "steps": steps, "seeds": [r["seed"] for r in group],
            "test_bpd_mean": mean, "test_bpd_stderr": se, "test_bpd_by_seed": bpd,
            f"test_bpd_iw{IMPORTANCE_SAMPLES}_mean": mean_and_stderr(iw)[0] if len(iw) == len(group) else None,
            f"test_bpd_iw{IMPORTANCE_SAMPLES}_stderr": mean_and_stderr(iw)[1] if len(iw) == len(group) else None,
            "clipped_fraction_mean": sum(r["clipped_fraction"] for r in group) / len(group),
            "clipped_fraction_by_seed": [r["clipped_fraction"] for r in group],
            "grad_norm_median_nats": sorted(r["grad_norm_nats"]["median"] for r in group)[len(group) // 2],
            "grad_norm_last_100_median_nats": [r["grad_norm_nats"]["last_100_median"] for r in group],
            "wall_seconds_mean": sum(r["wall_seconds"] for r in group) / len(group),
            "train_seconds_mean": sum(r["train_seconds"] for r in group) / len(group),
            "nonfinite_steps": sum(r["nonfinite_steps"] for r in group),
        })
    for row in rows:  # each setting against the official threshold at the same step count
        ref = next((o for o in rows if o["steps"] == row["steps"] and o["grad_clip_nats"] == OFFICIAL_CLIP_NATS), None)
        if ref is None or row is ref:
            continue
        # independent samples: the two standard errors add in quadrature
        row["difference_mean"] = row["test_bpd_mean"] - ref["test_bpd_mean"]
        row["difference_stderr"] = math.hypot(row["test_bpd_stderr"], ref["test_bpd_stderr"])
        # the same seed fixes the initialisation and the batches of both runs: the paired difference
        by_seed = dict(zip(ref["seeds"], ref["test_bpd_by_seed"]))
        paired = [v - by_seed[s] for s, v in zip(row["seeds"], row["test_bpd_by_seed"]) if s in by_seed]
        row["paired_differences"] = paired
        row["paired_difference_mean"], row["paired_difference_stderr"] = mean_and_stderr(paired)
    return rows


def table(rows: list[dict], commands: list[str]) -> str:
    iw = f"test_bpd_iw{IMPORTANCE_SAMPLES}"
    lines = ["| setting | clip (nats/image) | clip (bits/dim units) | test bits/dim, mean ± s.e. | vs official | "
             f"vs official, paired by seed | each seed | IW-{IMPORTANCE_SAMPLES} mean ± s.e. | steps clipped | "
             "median grad norm (nats) | steps | seeds | wall s per run |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        clip = f"{r['grad_clip_nats']:g}" if r["grad_clip_nats"] else "off"
        clip_bpd = f"{r['grad_clip_bpd']:.4g}" if r["grad_clip_nats"] else "off"
        seeds = ", ".join(f"{v:.4f}" for v in r["test_bpd_by_seed"])
        iw_text = f"{r[iw + '_mean']:.4f} ± {r[iw + '_stderr']:.4f}" if r[iw + "_mean"] is not None else "-"
        diff = f"{r['difference_mean']:+.4f} ± {r['difference_stderr']:.4f}" if "difference_mean" in r else "-"
        paired = f"{r['paired_difference_mean']:+.4f} ± {r['paired_difference_stderr']:.4f}" if "paired_difference_mean" in r else "-"
        lines.append(f"| {r['setting']} | {clip} | {clip_bpd} | {r['test_bpd_mean']:.4f} ± {r['test_bpd_stderr']:.4f} | "
                     f"{diff} | {paired} | {seeds} | {iw_text} | {100 * r['clipped_fraction_mean']:.1f}% | {r['grad_norm_median_nats']:.1f} | "
                     f"{r['steps']} | {len(r['seeds'])} | {r['wall_seconds_mean']:.0f} |")
    notes = [
        "", "Test bits/dim of the EMA weights on the 300 test digits with one dequantization sample (as `make demo` "
        f"reports it), and importance-weighted with {IMPORTANCE_SAMPLES} samples; mean ± standard error over seeds "
        "(sample standard deviation / sqrt(seeds)). Settings: `flowpp.cli.DEMO_SETTINGS` (batch 64, lr 2e-3, warm-up 100, "
        "EMA 0.995) for a fixed number of steps on one CPU thread. A step is clipped when the global norm of the "
        "gradient of the loss in nats per image exceeds the threshold. The differences from the official setting: "
        "of the means (standard errors in quadrature), and paired by seed (the seed fixes the initialisation and "
        "the batches).", "", "The commands that made the runs (each run is one JSON file; a command skips the "
        "runs whose file exists):", "", "```bash", *commands, "```", ""]
    return "\n".join(lines + notes)


def draw(runs: list[dict], rows: list[dict]):
    "The figure: each seed's test bits/dim per setting, and the gradient norms of one seed against the thresholds."
    import matplotlib.pyplot as plt
    steps = max(r["steps"] for r in rows)
    rows = [r for r in rows if r["steps"] == steps]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {OFFICIAL_CLIP_NATS: "C0", OLD_CLIP_NATS: "C1", 0.0: "C2"}
    for i, r in enumerate(rows):
        c = colors.get(r["grad_clip_nats"], f"C{i + 3}")
        ax0.scatter([i] * len(r["test_bpd_by_seed"]), r["test_bpd_by_seed"], color=c, alpha=0.5, s=18)
        ax0.errorbar([i + 0.15], [r["test_bpd_mean"]], yerr=[2 * r["test_bpd_stderr"]], fmt="o", color=c, capsize=4)
    ax0.set_xticks(range(len(rows)), [r["setting"].replace(": ", ":\n").replace(" (", "\n(") for r in rows], fontsize=8)
    ax0.set_ylabel("test bits/dim (EMA, 1 sample)")
    ax0.set_title(f"{steps} steps: each seed, mean ± 2 s.e.", fontsize=10)
    ax0.grid(alpha=0.3, axis="y")
    seed0 = min(r["seed"] for r in runs)
    for r in sorted((r for r in runs if r["steps"] == steps and r["seed"] == seed0), key=lambda r: -r["grad_clip_nats"]):
        c = colors.get(r["grad_clip_nats"], "C3")
        ax1.plot(range(1, len(r["grad_norm_trace"]) + 1), r["grad_norm_trace"], color=c, lw=0.6, alpha=0.8,
                 label=setting_name(r["grad_clip_nats"]))
    for clip, c in ((OFFICIAL_CLIP_NATS, "C0"), (OLD_CLIP_NATS, "C1")):
        ax1.axhline(clip, color=c, ls="--", lw=1)
    ax1.set_yscale("log")
    ax1.set_xlabel("step"); ax1.set_ylabel("gradient norm before clipping (nats/image)")
    ax1.set_title(f"seed {seed0}: dashed lines are the two thresholds", fontsize=10)
    ax1.legend(fontsize=8); ax1.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def report(out: Path, figure_path: Path) -> list[dict]:
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    runs = load_runs(out)
    if not runs:
        raise SystemExit(f"no finished runs in {out}")
    rows = summarize(runs)
    commands = sorted({r["command"] for r in runs})
    write_report(out, {"rows": rows, "commands": commands, "environment": runs[0]["environment"]},
                 table(rows, commands), draw(runs, rows), figure_path)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "clipping_digits")
    p.add_argument("--seeds", default="0,1,2", help="'0,1,2' or '0-4'")
    p.add_argument("--steps", type=int, default=800, help="training steps per run (800: about as long as `make demo`'s 240 s "
                   "on one thread of a shared 2-core machine)")
    p.add_argument("--clips", default=f"{OFFICIAL_CLIP_NATS:g},{OLD_CLIP_NATS:g},0",
                   help="thresholds on the nats-per-image gradient norm (0: no clipping)")
    p.add_argument("--figure", type=Path, default=ROOT / "figures" / "clipping_digits.png")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table, summary and figure")
    args = p.parse_args(argv)
    clips = [float(c) for c in args.clips.split(",")]
    if not args.report_only:
        for seed in parse_seeds(args.seeds):  # seed by seed, so a partial sweep compares the settings on equal seeds
            for clip in clips:
                path = args.out / run_name(args.steps, clip, seed)
                if path.exists():
                    print(f"skip {path.name}: done")
                    continue
                t0 = time.perf_counter()
                r = train_run(path, seed=seed, steps=args.steps, grad_clip=clip, importance_samples=IMPORTANCE_SAMPLES,
                              extra={"experiment": "clipping_digits", "setting": setting_name(clip)})
                print(f"{path.name}: test {r['test_bpd']:.4f} bits/dim, clipped {100 * r['clipped_fraction']:.1f}% of "
                      f"steps, {time.perf_counter() - t0:.0f} s", flush=True)
    report(args.out, args.figure)


if __name__ == "__main__":
    main()
