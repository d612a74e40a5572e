"""The CIFAR-10 budget protocol and its results notebook run end to end on the CPU with tiny budgets.

The real protocol needs a GPU (360 s of the main run and 120 s for each of the three ablations on CIFAR-10); here the
same notebooks run on the embedded digits with every model shrunk by the same overrides and a few steps per run,
so the pipeline (the named ablation configs, papermill runs done in two calls, collection, tables, figures) is
tested without pretending to produce results.
"""
import json
import shutil
from pathlib import Path

import papermill

from test_papermill import TINY_MODEL

EXPERIMENTS = Path(__file__).resolve().parent.parent / "nbs" / "experiments"
DIGITS_SHAPE = {"image_shape": [1, 8, 8], "num_levels": 17}  # the named CIFAR-10 configs, sized for the digits
ABLATIONS = {"uniform_dequantization": "cifar10_uniform_dequant", "affine_coupling": "cifar10_affine",
             "no_attention": "cifar10_no_attention"}


def test_protocol_and_results_notebooks(tmp_path):
    results, runs, figures = tmp_path / "results", tmp_path / "runs", tmp_path / "figures"
    common = dict(dataset="digits", data_path=None, main_model="digits", model_overrides={**TINY_MODEL, **DIGITS_SHAPE},
                  max_steps=3, batch_size=16, lr=2e-3, warmup_steps=1, eval_limit=30, importance_samples=2,
                  num_sample_images=16, device="cpu", results_dir=str(results), runs_dir=str(runs))
    # the main run and the ablations in two calls, as on a GPU lent a few minutes at a time
    for names in (["main"], list(ABLATIONS)):
        papermill.execute_notebook(
            str(EXPERIMENTS / "cifar10_budget.ipynb"), str(tmp_path / "protocol.ipynb"), cwd=str(EXPERIMENTS),
            progress_bar=False, kernel_name="python3", parameters=dict(common, runs=names))
    names = ["main", *ABLATIONS]
    metrics = {name: json.loads((results / name / "metrics.json").read_text()) for name in names}
    for name, m in metrics.items():
        assert m["steps"] == 3 and m["test_images"] == 30, name
        assert (results / name / "train.ipynb").exists() and not list((results / name).glob("*.pt")), \
            "results keep the small files only; checkpoints stay in runs/"
        assert m["model"] == ({"main": "digits"} | ABLATIONS)[name]
    # the named configs' switches reached the models: no dequantizer flow, another coupling, another mixer
    assert metrics["uniform_dequantization"]["parameters"] < metrics["main"]["parameters"]
    assert len({m["parameters"] for m in metrics.values()}) >= 3
    # the main run alone is importance-weighted and checks exact encoding
    assert "test_bpd_iw2" in metrics["main"] and metrics["main"]["decode_encode_mismatched_pixels"] == 0
    assert not any(k.startswith("test_bpd_iw") for k in metrics["no_attention"])
    protocol = json.loads((results / "protocol.json").read_text())
    assert sorted(protocol["runs"]) == sorted(names), "the second call added its runs to the first's"
    assert protocol["runs"]["affine_coupling"]["model"] == "cifar10_affine"
    assert protocol["runs"]["main"]["parameters"] == metrics["main"]["parameters"]

    papermill.execute_notebook(
        str(EXPERIMENTS / "results.ipynb"), str(tmp_path / "results.ipynb"), cwd=str(EXPERIMENTS), progress_bar=False,
        kernel_name="python3", parameters=dict(results_dir=str(results), figures_dir=str(figures), figure_prefix="t"))
    table = (results / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(names), table
    assert "3.165" in table[2] and "3.292" in table[3] and "`cifar10_affine`" in table[4], table
    assert all("end of run" in row for row in table[2:]), "a step budget has no timed evaluations: said so"
    main = (results / "main.md").read_text()
    assert "decode(encode(x)) != x at **0**" in main and "Importance-weighted (2 samples)" in main, main
    assert (figures / "t_bpd_vs_time.png").exists() and len(list(figures.glob("t_*_samples.png"))) == len(names)
    assert all(r["status"] == "done" for r in protocol["runs"].values())

    # a main run that a time limit cut during its checks (gpu_run.sh recovers what it wrote): the results still draw
    cut_results = tmp_path / "cut"
    shutil.copytree(results, cut_results)
    m = json.loads((cut_results / "main" / "metrics.json").read_text())
    m = {k: v for k, v in m.items() if not k.startswith(("test_bpd_iw", "importance_samples", "sampling_seconds"))}
    (cut_results / "main" / "metrics.json").write_text(json.dumps(m | {"complete": False}))
    (cut_results / "main" / "samples.png").rename(cut_results / "main" / "samples_00000003.png")
    protocol["runs"]["main"]["status"] = "cut"
    (cut_results / "protocol.json").write_text(json.dumps(protocol))
    papermill.execute_notebook(
        str(EXPERIMENTS / "results.ipynb"), str(tmp_path / "results_cut.ipynb"), cwd=str(EXPERIMENTS), progress_bar=False,
        kernel_name="python3", parameters=dict(results_dir=str(cut_results), figures_dir=str(figures), figure_prefix="c"))
    main = (cut_results / "main.md").read_text()
    assert "Cut by the time limit" in main and "Importance-weighted" not in main and "at **0**" in main, main
    assert len(list(figures.glob("c_*_samples.png"))) == len(names), "the trainer's own grid stands in"
