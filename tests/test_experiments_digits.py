"""The digits experiments: a run is deterministic given its seed and writes every field the tables read; a sweep
skips finished runs; the results notebook runs end to end on the committed results and its claims hold."""
import json
import os
import subprocess
import sys
from pathlib import Path

import papermill

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
NOTEBOOK = ROOT / "nbs" / "experiments" / "ablations_digits.ipynb"
FIELDS = ["test_bpd", "test_bpd_stderr", "clipped_fraction", "fraction_above", "grad_norm_nats", "grad_norm_trace",
          "parameters", "steps", "seed", "grad_clip_nats", "train_seconds", "wall_seconds", "environment", "command"]


def test_run_is_deterministic_and_complete(tmp_path):
    from common import train_run
    a = train_run(tmp_path / "a" / "run.json", seed=3, steps=6, grad_clip=1.0, runs_dir=tmp_path / "work")
    b = train_run(tmp_path / "b" / "run.json", seed=3, steps=6, grad_clip=1.0, runs_dir=tmp_path / "work")
    c = train_run(tmp_path / "c" / "run.json", seed=4, steps=6, grad_clip=1.0, runs_dir=tmp_path / "work")
    for name in FIELDS:
        assert name in a, name
    assert a["steps"] == 6 and len(a["grad_norm_trace"]) == 6 and a["test_images"] == 300
    assert a["test_bpd"] == b["test_bpd"] and a["grad_norm_trace"] == b["grad_norm_trace"]  # same seed: same numbers
    assert a["test_bpd"] != c["test_bpd"]  # another seed: another run
    assert a["clipped_fraction"] == 1.0  # at initialisation the gradient norm is far above 1 nat per image
    assert not (tmp_path / "work" / "a" / "run").exists()  # checkpoints are not kept


def test_sweep_skips_finished_runs_and_reports(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "experiments" / "ablations_digits.py"), "--out", str(tmp_path / "abl"),
           "--figure", str(tmp_path / "abl.png"), "--seeds", "0", "--steps", "4", "--variants", "full,no_attention"]
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("skip ") == 2, again.stdout + again.stderr
    table = (tmp_path / "abl" / "table.md").read_text()
    assert "no self-attention" in table and "+0.028" in table and (tmp_path / "abl.png").exists()
    widths = json.loads((tmp_path / "abl" / "widths.json").read_text())
    assert widths["no_attention"]["difference"] == 0 and abs(widths["affine_coupling"]["relative_difference"]) < 0.01


def test_results_notebook_runs_on_the_committed_results(tmp_path):
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(NOTEBOOK.parent),
                               progress_bar=False, kernel_name="python3")


def test_steps_curve_is_evaluated_without_changing_training(tmp_path, capsys):
    import steps_digits
    out = tmp_path / "steps"
    a = steps_digits.curve_run(out / steps_digits.run_name(4, 0.2, 0), seed=0, steps=4, dropout=0.2, eval_every=2,
                               runs_dir=tmp_path / "work")
    assert [c["step"] for c in a["curve"]] == [2, 4] and all("train_set_bpd" in c for c in a["curve"])
    assert a["test_images"] == 300 and a["train_set_images"] == 1497 and len(a["train_bpd_trace"]) == 4
    assert a["curve"][-1]["test_bpd"] == a["test_bpd"] and a["best_test_bpd"] == min(c["test_bpd"] for c in a["curve"])
    assert a["model_overrides"] == {"dropout": 0.2} and a["curve"][0]["test_bpd"] != a["curve"][1]["test_bpd"]
    # evaluating (test and training set) on the way leaves the trained weights bit for bit as they were
    b = steps_digits.curve_run(tmp_path / "b" / "run.json", seed=0, steps=4, dropout=0.2, eval_every=0,
                               train_set_eval=False, runs_dir=tmp_path / "work", write=False)
    assert b["weights_sha256"] == a["weights_sha256"] and b["test_bpd"] == a["test_bpd"]
    assert [c["step"] for c in b["curve"]] == [4] and "train_set_bpd" not in b["curve"][0]
    assert not (tmp_path / "work" / "steps" / "steps4_dropout0.2_seed0").exists()  # checkpoints are not kept
    # the sweep skips the finished run and reports
    steps_digits.main(["--out", str(out), "--figure", str(tmp_path / "steps.png"), "--steps", "4", "--eval-every", "2",
                       "--seeds", "0", "--dropouts", "0.2"])
    assert "skip steps4_dropout0.2_seed0.json" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"][0]["best_test_bpd_mean"] == a["best_test_bpd"] and (tmp_path / "steps.png").exists()
    assert "dropout 0.2" in (out / "table.md").read_text()
