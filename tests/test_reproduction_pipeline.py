"""The CIFAR-10 budget protocol and its results notebook run end to end on the CPU with tiny budgets.

The real protocol needs a GPU (360 s + 4 x 180 s on CIFAR-10); here the same notebooks run on the embedded digits
with a tiny model and a few steps per run, so the pipeline (papermill runs, collection, table, figures) is tested
without pretending to produce results.
"""
import json
from pathlib import Path

import papermill

from test_papermill import TINY_MODEL

EXPERIMENTS = Path(__file__).resolve().parent.parent / "nbs" / "experiments"


def test_protocol_and_results_notebooks(tmp_path):
    results, runs, figures = tmp_path / "results", tmp_path / "runs", tmp_path / "figures"
    papermill.execute_notebook(
        str(EXPERIMENTS / "cifar10_budget.ipynb"), str(tmp_path / "protocol.ipynb"), cwd=str(EXPERIMENTS),
        progress_bar=False, kernel_name="python3",
        parameters=dict(dataset="digits", data_path=None, model="digits", model_overrides=TINY_MODEL, max_steps=3,
                        batch_size=16, lr=2e-3, warmup_steps=1, eval_every=1, eval_limit=30, importance_samples=2,
                        device="cpu", results_dir=str(results), runs_dir=str(runs)))
    names = ["main", "full", "uniform_dequantization", "affine_coupling", "no_attention"]
    for name in names:
        metrics = json.loads((results / name / "metrics.json").read_text())
        assert metrics["steps"] == 3 and metrics["test_images"] == 30
        assert (results / name / "train.ipynb").exists() and not list((results / name).glob("*.pt")), \
            "results keep the small files only; checkpoints stay in runs/"
    # the ablation switches reached the model
    assert json.loads((results / "uniform_dequantization" / "metrics.json").read_text())["parameters"] < \
        json.loads((results / "full" / "metrics.json").read_text())["parameters"]
    papermill.execute_notebook(
        str(EXPERIMENTS / "results.ipynb"), str(tmp_path / "results.ipynb"), cwd=str(EXPERIMENTS), progress_bar=False,
        kernel_name="python3", parameters=dict(results_dir=str(results), figures_dir=str(figures), figure_prefix="t"))
    table = (results / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(names) and "3.292" in table[4], table
    assert (figures / "t_bpd_vs_time.png").exists() and len(list(figures.glob("t_*_samples.png"))) == len(names)
