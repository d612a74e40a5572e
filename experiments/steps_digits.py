"""Test bits/dim against training steps on the digits: the `make demo` settings (the `digits` model, the gradient
clipped at the official 1.0 nats per image) trained for a fixed number of steps with the EMA weights evaluated every
`--eval-every` steps on the 300 test digits (one dequantization sample, as `make demo` reports it) and on all 1,497
training digits; without dropout (today's `digits` model) and with the paper's CIFAR-10 dropout of 0.2; several seeds.

    python experiments/steps_digits.py --out results/steps_digits [--seeds 0,1] [--dropouts 0,0.2] [--steps 2000]
    python experiments/steps_digits.py --check-eval --steps 200 --seeds 0 --dropouts 0,0.2

One JSON per run (skipped when it exists, so an interrupted sweep resumes), then results/steps_digits/table.md,
summary.json and figures/steps_digits.png from every JSON in the folder (`--report-only` rebuilds just those).

`--check-eval` trains each (seed, dropout) twice for `--steps` steps, once evaluating every `--eval-every` steps and
once only at the end, and records whether the two runs end with the same weights (a hash of every parameter and
buffer of the model and of its EMA) and the same test bits/dim: evaluation runs on its own seeded random stream, so
it must not change what training draws.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (OFFICIAL_CLIP_NATS, ROOT, command_line, environment, mean_and_stderr, parse_seeds,
                    write_json_atomic, write_report)

import torch

from flowpp.cli import DEMO_SETTINGS
from flowpp.train import TrainConfig, Trainer, evaluate

SCHEMA = "flowpp-digits-steps-v1"
EVAL_EVERY = 100  # steps between evaluations of the EMA weights
REPORT_STEPS = (800, 1200, 1600, 2000)  # the step budgets the table reads off every curve
# the reference the figure marks: the full model of the ablation sweep, 800 steps, 5 seeds, the same settings
ABLATION_SUMMARY = ROOT / "results" / "ablations_digits" / "summary.json"
# the curves fall steeply over the first few hundred steps; the figure's y-axes are scaled to the steps from here on
FIRST_SHOWN_STEP = 300
# a `make demo` run (seed 0, dropout 0, 240 s of training on 2 threads; the step count is where its clock ran out)
DEMO_RUN = ROOT / "results" / "demo_run_dropout0.json"  # a make demo run from before it trained with dropout
CHECK_PREFIX = "eval_check"  # the file names of the --check-eval records (not runs of the curve)


def run_name(steps: int, dropout: float, seed: int) -> str:
    return f"steps{steps}_dropout{dropout:g}_seed{seed}.json"


def setting_name(dropout: float) -> str:
    return f"dropout {dropout:g}" + (" (today's digits model)" if dropout == 0 else "")


def weights_sha256(module: torch.nn.Module) -> str:
    "A hash of every parameter and buffer, bit for bit (names and values in state-dict order)."
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class CurveTrainer(Trainer):
    "The Trainer, also evaluating the EMA weights on the training images at every evaluation; a progress line each."

    train_set_eval = True  # evaluate on the training images too (off: the plain Trainer's evaluation only)

    def _eval_line(self, **extra) -> dict:
        t0 = time.perf_counter()
        ev = super()._eval_line(**extra)
        line = f"step {self.step}: test {ev['bpd']:.4f} bits/dim"
        done = self.__dict__.setdefault("train_set_steps", set())
        if self.train_set_eval and self.step not in done:  # the final evaluation repeats the last periodic one
            done.add(self.step)
            self._sync_clock()  # the clock is paused around evaluation, as for the test evaluation
            # its own seeded stream, like the test evaluation: training draws nothing less or more
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed + 1)
                tr = evaluate(self.ema, self.train_set, self.config.eval_batch_size)
            self._log({"step": self.step, "train_set_bpd": tr["bpd"], "train_set_bpd_stderr": tr["stderr"],
                       "train_set_images": tr["n"]})
            self._resume_clock()
            line += f", training set {tr['bpd']:.4f}"
        elif self.train_set_eval:
            line += " (again)"
        self.eval_seconds = getattr(self, "eval_seconds", 0.0) + time.perf_counter() - t0
        rate = self.step / self.train_seconds if self.train_seconds else float("nan")
        print(f"{self.out_dir.name} {line}, {rate:.2f} steps/s over {self.train_seconds:.0f} s of training",
              flush=True)
        return ev


def read_lines(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    "The per-step training lines, the test evaluation lines and the training-set evaluation lines of a metrics.jsonl."
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    return ([l for l in lines if "grad_norm" in l], [l for l in lines if "test_bpd" in l],
            [l for l in lines if "train_set_bpd" in l])


def by_step(lines: list[dict], key: str) -> dict[int, dict]:
    "One line per step; a step evaluated twice (the last periodic evaluation and the final one) must agree."
    out = {}
    for l in lines:
        if l["step"] in out and out[l["step"]][key] != l[key]:
            raise AssertionError(f"two evaluations of the same weights at step {l['step']} differ: "
                                 f"{out[l['step']][key]} and {l[key]}")
        out[l["step"]] = l
    return out


def curve_run(out_json: Path, *, seed: int, steps: int, dropout: float, eval_every: int = EVAL_EVERY,
              train_set_eval: bool = True, runs_dir: Path = ROOT / "runs" / "experiments",
              extra: dict | None = None, write: bool = True) -> dict:
    """Train the `make demo` settings for `steps` steps with the given dropout, evaluating the EMA weights every
    `eval_every` steps (0: only at the end); write `out_json` (unless `write` is off) and return the record."""
    work = runs_dir / out_json.parent.name / out_json.stem
    if work.exists():
        shutil.rmtree(work)  # a fresh run: never a resume
    config = TrainConfig(**{**DEMO_SETTINGS, "max_steps": steps, "max_seconds": None, "seed": seed,
                            "grad_clip": OFFICIAL_CLIP_NATS, "model_overrides": {"dropout": float(dropout)},
                            "log_every": 1,  # every step's training loss is read (the training curve)
                            "eval_every": eval_every, "out_dir": str(work), "device": "cpu", "progress": False})
    t0 = time.perf_counter()
    trainer = CurveTrainer(config)
    trainer.train_set_eval = train_set_eval
    summary = trainer.train()
    wall = time.perf_counter() - t0
    train_lines, test_lines, train_set_lines = read_lines(work / "metrics.jsonl")
    assert len(train_lines) == steps, f"expected {steps} step lines in {work}"
    tests, train_sets = by_step(test_lines, "test_bpd"), by_step(train_set_lines, "train_set_bpd")
    assert tests[steps]["test_bpd"] == summary["test_bpd"]
    train_bpd = [l["train_bpd"] for l in train_lines]
    curve = []
    for step in sorted(tests):
        window = train_bpd[max(0, step - (eval_every or steps)): step]  # the steps since the previous evaluation
        curve.append({"step": step, "test_bpd": tests[step]["test_bpd"], "test_bpd_stderr": tests[step]["test_bpd_stderr"],
                      **({"train_set_bpd": train_sets[step]["train_set_bpd"],
                          "train_set_bpd_stderr": train_sets[step]["train_set_bpd_stderr"]} if step in train_sets else {}),
                      "train_bpd_window_mean": sum(window) / len(window),
                      "train_seconds": tests[step]["train_seconds"]})
    best = min(curve, key=lambda c: c["test_bpd"])
    norms = torch.tensor([l["grad_norm"] for l in train_lines], dtype=torch.float64)
    record = {
        "schema": SCHEMA, "seed": seed, "steps": summary["steps"], "dropout": float(dropout),
        "grad_clip_nats": OFFICIAL_CLIP_NATS, "model_overrides": config.model_overrides, "eval_every": eval_every,
        "train_set_eval": train_set_eval,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "test_bpd": summary["test_bpd"], "test_bpd_stderr": summary["test_bpd_stderr"], "test_images": summary["test_images"],
        "train_set_images": len(trainer.train_set),
        "best_step": best["step"], "best_test_bpd": best["test_bpd"],
        "curve": curve,
        "train_bpd_trace": [round(v, 5) for v in train_bpd],  # each step's minibatch bits/dim (dropout on when set)
        "clipped_fraction": (norms > OFFICIAL_CLIP_NATS).double().mean().item(),
        "grad_norm_median_nats": norms.median().item(),
        "weights_sha256": {"model": weights_sha256(trainer.model), "ema": weights_sha256(trainer.ema)},
        "nonfinite_steps": summary["nonfinite_steps"],
        "train_seconds": summary["train_seconds"], "steps_per_second": summary["steps"] / summary["train_seconds"],
        "init_seconds": summary.get("init_seconds"), "first_step_seconds": summary.get("first_step_seconds"),
        "eval_seconds": getattr(trainer, "eval_seconds", 0.0), "wall_seconds": wall,
        "train_config": {k: v for k, v in asdict(config).items() if k not in ("out_dir", "progress")},
        "environment": environment(), "command": command_line(), **(extra or {}),
    }
    if write:
        write_json_atomic(out_json, record)  # a JSON file exists only for a finished run
    shutil.rmtree(work)  # the checkpoint and samples are not kept
    return record


def check_eval(out: Path, *, seed: int, steps: int, dropout: float, eval_every: int) -> dict:
    "Train twice, with and without periodic evaluation; record whether the weights and the final test bits/dim agree."
    path = out / f"{CHECK_PREFIX}_steps{steps}_dropout{dropout:g}_seed{seed}.json"
    if path.exists():
        print(f"skip {path.name}: done", flush=True)
        return json.loads(path.read_text())
    runs = {}
    for name, every, tr in (("with_eval", eval_every, True), ("without_eval", 0, False)):
        r = curve_run(out / f"{path.stem}_{name}.json", seed=seed, steps=steps, dropout=dropout, eval_every=every,
                      train_set_eval=tr, write=False)
        runs[name] = {k: r[k] for k in ("eval_every", "train_set_eval", "test_bpd", "test_bpd_stderr", "weights_sha256",
                                        "train_seconds", "steps_per_second", "wall_seconds")}
        runs[name]["train_bpd_last"] = r["train_bpd_trace"][-1]
        runs[name]["evaluations"] = [{k: c[k] for k in ("step", "test_bpd", "train_set_bpd") if k in c} for c in r["curve"]]
    a, b = runs["with_eval"], runs["without_eval"]
    record = {"schema": SCHEMA + "-eval-check", "seed": seed, "steps": steps, "dropout": float(dropout),
              "same_test_bpd": a["test_bpd"] == b["test_bpd"], "test_bpd_difference": a["test_bpd"] - b["test_bpd"],
              "same_weights": a["weights_sha256"] == b["weights_sha256"], "runs": runs,
              "environment": environment(), "command": command_line()}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{path.name}: with evaluation every {eval_every} steps {a['test_bpd']!r}, without {b['test_bpd']!r}; "
          f"same weights: {record['same_weights']}", flush=True)
    return record


def load_runs(folder: Path) -> list[dict]:
    "Every finished curve run's JSON in `folder`."
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("steps*.json"))]
    return [r for r in records if isinstance(r, dict) and r.get("schema") == SCHEMA]


def load_checks(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{CHECK_PREFIX}_*.json"))]


def at(run: dict, step: int, key: str = "test_bpd") -> float | None:
    return next((c[key] for c in run["curve"] if c["step"] == step and key in c), None)


def summarize(runs: list[dict]) -> dict:
    """Per dropout: each seed's curve, the mean curve over seeds, the best step of each; and the difference of
    dropout 0.2 from no dropout, paired by seed, at every evaluated step."""
    settings = []
    for dropout in sorted({r["dropout"] for r in runs}):
        group = sorted((r for r in runs if r["dropout"] == dropout), key=lambda r: r["seed"])
        steps = sorted(set.intersection(*({c["step"] for c in r["curve"]} for r in group)))
        mean_curve = []
        for s in steps:
            test = [at(r, s) for r in group]
            tr = [at(r, s, "train_set_bpd") for r in group]
            mb = [at(r, s, "train_bpd_window_mean") for r in group]
            mean, se = mean_and_stderr(test)
            mean_curve.append({"step": s, "test_bpd_mean": mean, "test_bpd_stderr": se, "test_bpd_by_seed": test,
                               "train_set_bpd_mean": sum(tr) / len(tr) if None not in tr else None,
                               "train_bpd_window_mean": sum(mb) / len(mb)})
        best = min(mean_curve, key=lambda c: c["test_bpd_mean"])
        settings.append({
            "setting": setting_name(dropout), "dropout": dropout, "seeds": [r["seed"] for r in group],
            "max_steps": min(r["steps"] for r in group),
            "best_step_of_mean": best["step"], "best_test_bpd_mean": best["test_bpd_mean"],
            "best_step_by_seed": [r["best_step"] for r in group], "best_test_bpd_by_seed": [r["best_test_bpd"] for r in group],
            "at_steps": {str(s): next((c for c in mean_curve if c["step"] == s), None) for s in REPORT_STEPS},
            "mean_curve": mean_curve,
            "steps_per_second_by_seed": [r["steps_per_second"] for r in group],
            "train_seconds_by_seed": [r["train_seconds"] for r in group],
            "eval_seconds_by_seed": [r["eval_seconds"] for r in group],
            "wall_seconds_by_seed": [r["wall_seconds"] for r in group],
            "nonfinite_steps": sum(r["nonfinite_steps"] for r in group),
        })
    paired = []
    base = {r["seed"]: r for r in runs if r["dropout"] == 0}
    for r in sorted((r for r in runs if r["dropout"] != 0), key=lambda r: (r["dropout"], r["seed"])):
        if r["seed"] not in base:
            continue
        for c in r["curve"]:
            ref = at(base[r["seed"]], c["step"])
            if ref is not None:
                paired.append({"dropout": r["dropout"], "seed": r["seed"], "step": c["step"],
                               "difference": c["test_bpd"] - ref})
    differences = []
    for dropout, step in sorted({(p["dropout"], p["step"]) for p in paired}):
        d = [p["difference"] for p in paired if (p["dropout"], p["step"]) == (dropout, step)]
        mean, se = mean_and_stderr(d)
        differences.append({"dropout": dropout, "step": step, "by_seed": d, "mean": mean, "stderr": se})
    return {"settings": settings, "paired_differences": differences}


def reference() -> dict | None:
    "The full model of the ablation sweep (800 steps, the same settings): mean ± s.e. over its seeds."
    if not ABLATION_SUMMARY.exists():
        return None
    row = next((r for r in json.loads(ABLATION_SUMMARY.read_text())["rows"] if r.get("variant") == "full"), None)
    return row and {"steps": row["steps"], "seeds": row["seeds"], "test_bpd_mean": row["test_bpd_mean"],
                    "test_bpd_stderr": row["test_bpd_stderr"], "test_bpd_by_seed": row["test_bpd_by_seed"]}


def demo_run() -> dict | None:
    "The committed `make demo` run's step count and test bits/dim (one sample)."
    if not DEMO_RUN.exists():
        return None
    d = json.loads(DEMO_RUN.read_text())
    return {k: d[k] for k in ("steps", "train_seconds", "test_bpd", "test_bpd_stderr")}


def reference_agreement(runs: list[dict], ref: dict) -> list[dict]:
    "The dropout-0 runs' test bits/dim at the reference's step count against the reference's runs of the same seeds."
    there = dict(zip(ref["seeds"], ref["test_bpd_by_seed"]))
    return [{"seed": r["seed"], "here": at(r, ref["steps"]), "there": there[r["seed"]],
             "identical": at(r, ref["steps"]) == there[r["seed"]]}
            for r in sorted(runs, key=lambda r: r["seed"])
            if r["dropout"] == 0 and r["seed"] in there and at(r, ref["steps"]) is not None]


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def table(runs: list[dict], summary: dict, checks: list[dict], commands: list[str], ref: dict | None) -> str:
    cols = " | ".join(f"test at {s}" for s in REPORT_STEPS)
    lines = [f"| setting | seed | lowest test bits/dim | at step | {cols} | training set (EMA) at the last step | "
             "steps/s (one thread) |",
             "|---|---|---:|---:|" + "---:|" * len(REPORT_STEPS) + "---:|---:|"]
    for s in summary["settings"]:
        group = sorted((r for r in runs if r["dropout"] == s["dropout"]), key=lambda r: r["seed"])
        for r in group:
            vals = " | ".join(fmt(at(r, st)) for st in REPORT_STEPS)
            lines.append(f"| {s['setting']} | {r['seed']} | {r['best_test_bpd']:.4f} | {r['best_step']} | {vals} | "
                         f"{fmt(at(r, r['steps'], 'train_set_bpd'))} | {r['steps_per_second']:.2f} |")
        vals = " | ".join(fmt(c and c["test_bpd_mean"]) for c in s["at_steps"].values())
        rate = sum(s["steps_per_second_by_seed"]) / len(s["steps_per_second_by_seed"])
        last = s["mean_curve"][-1]
        lines.append(f"| {s['setting']} | mean of {len(s['seeds'])} | {s['best_test_bpd_mean']:.4f} | "
                     f"{s['best_step_of_mean']} | {vals} | {fmt(last['train_set_bpd_mean'])} | {rate:.2f} |")
    out = lines
    if summary["paired_differences"]:
        out += ["", "Dropout against no dropout, paired by seed (the seed fixes the initialisation and the batches): "
                "test bits/dim with dropout minus without, mean over seeds (each seed's value in brackets).", "",
                "| dropout | step | difference | each seed |", "|---|---:|---:|---|"]
        for d in summary["paired_differences"]:
            if d["step"] % 200 == 0 or d["step"] == 100:
                out.append(f"| {d['dropout']:g} | {d['step']} | {d['mean']:+.4f} | "
                           + ", ".join(f"{v:+.4f}" for v in d["by_seed"]) + " |")
    if checks:
        every = checks[0]["runs"]["with_eval"]["eval_every"]
        out += ["", "Does evaluation change training? Each pair trained the same seed for the same steps, once "
                f"evaluating every {every} steps (test and training set) and once only at the end.", "",
                f"| seed | dropout | steps | test bits/dim, evaluating every {every} steps | only at the end | same weights "
                "(model and EMA, bit for bit) |", "|---:|---:|---:|---:|---:|---|"]
        for c in sorted(checks, key=lambda c: (c["seed"], c["dropout"], c["steps"])):
            out.append(f"| {c['seed']} | {c['dropout']:g} | {c['steps']} | {c['runs']['with_eval']['test_bpd']!r} | "
                       f"{c['runs']['without_eval']['test_bpd']!r} | {'yes' if c['same_weights'] else 'NO'} |")
    ref_text = ""
    if ref:
        ref_text = (f" The {ref['steps']}-step reference: the full model of `results/ablations_digits` (dropout 0, the "
                    f"same settings, evaluated only at the end), {ref['test_bpd_mean']:.4f} ± {ref['test_bpd_stderr']:.4f} "
                    f"over {len(ref['seeds'])} seeds.")
        same = reference_agreement(runs, ref)
        if same:
            ref_text += (f" This sweep's dropout-0 curves at step {ref['steps']}, seed by seed against those runs: "
                         + "; ".join(f"seed {a['seed']} {a['here']!r} and {a['there']!r} "
                                     f"({'identical' if a['identical'] else 'DIFFERENT'})" for a in same) + ".")
    out += [
        "", "Test bits/dim of the EMA weights on the 300 test digits, one dequantization sample (as `make demo` reports "
        f"it), evaluated every {runs[0]['eval_every']} steps of one run per seed; the training set column evaluates the "
        "same EMA weights the same way on all 1,497 training digits. Settings: `flowpp.cli.DEMO_SETTINGS` (batch 64, "
        "lr 2e-3, warm-up 100, EMA 0.995, no learning-rate decay), the `digits` model with the dropout shown, the "
        "gradient clipped at 1 nats per image, one CPU thread per process, two processes at a time on a 2-core machine. "
        "Steps/s counts training time only (the clock is paused for evaluation)." + ref_text,
        "", "The commands that made the runs (each run is one JSON file; a command skips the runs whose file exists):",
        "", "```bash", *commands, "```", ""]
    return "\n".join(out)


def draw(runs: list[dict], summary: dict, ref: dict | None):
    "Test bits/dim against steps (each seed, both dropouts), and the training curves."
    import matplotlib.pyplot as plt
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.4))
    colors = {s["dropout"]: f"C{i}" for i, s in enumerate(summary["settings"])}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r["seed"] for r in runs})
    for r in sorted(runs, key=lambda r: (r["dropout"], r["seed"])):
        steps = [c["step"] for c in r["curve"]]
        ls = styles[seeds.index(r["seed"]) % len(styles)]
        ax0.plot(steps, [c["test_bpd"] for c in r["curve"]], ls, color=colors[r["dropout"]], marker="o", ms=2.5, lw=1.2,
                 label=f"{setting_name(r['dropout']).split(' (')[0]}, seed {r['seed']}")
        ax1.plot(steps, [c["train_bpd_window_mean"] for c in r["curve"]], ls, color=colors[r["dropout"]], lw=0.9, alpha=0.55)
        ax1.plot(steps, [c.get("train_set_bpd") for c in r["curve"]], ls, color=colors[r["dropout"]], lw=1.6,
                 label=f"{setting_name(r['dropout']).split(' (')[0]}, seed {r['seed']}")
    for s in summary["settings"]:  # the best step of the mean curve
        ax0.plot([s["best_step_of_mean"]], [s["best_test_bpd_mean"]], marker="v", ms=9, color=colors[s["dropout"]],
                 markeredgecolor="k", ls="none")
    if ref:
        ax0.errorbar([ref["steps"]], [ref["test_bpd_mean"]], yerr=[2 * ref["test_bpd_stderr"]], fmt="s", color="k",
                     capsize=4, ms=6, zorder=5, label=f"ablation sweep, {ref['steps']} steps: mean ± 2 s.e. "
                                                      f"({len(ref['seeds'])} seeds)")
    demo = demo_run()
    if demo:
        ax0.plot([demo["steps"]], [demo["test_bpd"]], "D", color="0.45", ms=6, zorder=5,
                 label=f"`make demo`, seed 0 ({DEMO_RUN.name}: {demo['train_seconds']:.0f} s on 2 threads)")
    # the early steps are far above the rest; the axes show the part of the curves the question is about
    late = [c["test_bpd"] for r in runs for c in r["curve"] if c["step"] >= FIRST_SHOWN_STEP] or \
        [c["test_bpd"] for r in runs for c in r["curve"]]
    ax0.set_ylim(min(late) - 0.01, max(late) + 0.01)
    ax0.set_xlabel("training step"); ax0.set_ylabel("test bits/dim (EMA, 1 sample, 300 digits)")
    ax0.set_title("test bits/dim against steps (triangles: lowest mean over seeds)", fontsize=10)
    ax0.legend(fontsize=7.5); ax0.grid(alpha=0.3)
    late = [v for r in runs for c in r["curve"] if c["step"] >= FIRST_SHOWN_STEP or r["steps"] < FIRST_SHOWN_STEP
            for v in (c.get("train_set_bpd"), c["train_bpd_window_mean"]) if v is not None]
    ax1.set_ylim(min(late) - 0.02, max(late) + 0.02)
    ax1.set_xlabel("training step"); ax1.set_ylabel("bits/dim")
    ax1.set_title("training: EMA on the 1,497 training digits (thick); minibatch loss, mean of each\n"
                  "100 steps (thin; dropout on when set)", fontsize=10)
    ax1.legend(fontsize=7.5); ax1.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def report(out: Path, figure_path: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    runs, checks = load_runs(out), load_checks(out)
    if not runs:
        raise SystemExit(f"no finished runs in {out}")
    summary = summarize(runs)
    ref = reference()
    commands = sorted({r["command"] for r in runs} | {c["command"] for c in checks})
    write_report(out, {
        **summary, "reference_800_steps": ref, "reference_agreement": reference_agreement(runs, ref) if ref else [],
        "demo_run": demo_run(),
        "eval_checks": [{k: c[k] for k in ("seed", "dropout", "steps", "same_weights", "same_test_bpd",
                                           "test_bpd_difference")} for c in checks],
        "commands": commands, "environment": runs[0]["environment"]},
        table(runs, summary, checks, commands, ref), draw(runs, summary, ref), figure_path)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "steps_digits")
    p.add_argument("--seeds", default="0,1", help="'0,1' or '0-4'")
    p.add_argument("--dropouts", default="0,0.2", help="dropout rates of the conditioners")
    p.add_argument("--steps", type=int, default=2000, help="training steps per run")
    p.add_argument("--eval-every", type=int, default=EVAL_EVERY, help="steps between evaluations")
    p.add_argument("--figure", type=Path, default=ROOT / "figures" / "steps_digits.png")
    p.add_argument("--check-eval", action="store_true",
                   help="train each run with and without periodic evaluation and compare (no curve runs)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table, summary and figure")
    args = p.parse_args(argv)
    dropouts = [float(d) for d in args.dropouts.split(",")]
    if args.check_eval:
        for seed in parse_seeds(args.seeds):
            for dropout in dropouts:
                check_eval(args.out, seed=seed, steps=args.steps, dropout=dropout, eval_every=args.eval_every)
        return
    if not args.report_only:
        for seed in parse_seeds(args.seeds):  # seed by seed, so a partial sweep compares the settings on equal seeds
            for dropout in dropouts:
                path = args.out / run_name(args.steps, dropout, seed)
                if path.exists():
                    print(f"skip {path.name}: done", flush=True)
                    continue
                t0 = time.perf_counter()
                r = curve_run(path, seed=seed, steps=args.steps, dropout=dropout, eval_every=args.eval_every,
                              extra={"experiment": "steps_digits", "setting": setting_name(dropout)})
                print(f"{path.name}: lowest test {r['best_test_bpd']:.4f} bits/dim at step {r['best_step']}, "
                      f"{r['test_bpd']:.4f} at step {r['steps']}; {r['steps_per_second']:.2f} steps/s, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
    report(args.out, args.figure)


if __name__ == "__main__":
    main()
