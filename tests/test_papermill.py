"""The papermill training notebook runs end to end with tiny parameters on the CPU."""
import json
from pathlib import Path

import papermill

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "nbs" / "experiments" / "train.ipynb"
TINY_MODEL = {"filters": 8, "blocks": 1, "components": 4, "stages": ["checkerboard:2", "squeeze", "channels:1"],
              "dequant_filters": 8, "dequant_blocks": 1, "context_channels": 4, "context_blocks": 1,
              "dequant_stages": ["checkerboard:1"]}


def test_train_notebook_runs_with_tiny_parameters(tmp_path):
    out_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "train.ipynb"), cwd=str(NOTEBOOK.parent), progress_bar=False, kernel_name="python3",
        parameters=dict(max_seconds=None, max_steps=4, model_overrides=TINY_MODEL, batch_size=16, importance_samples=2,
                        eval_limit=50, eval_at_seconds=[1e-9], amp=True, channels_last=True, log_every=2,
                        num_sample_images=16, device="cpu", out_dir=str(out_dir)))
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["test_images"] == 50
    assert metrics["test_bpd"] > 0 and metrics["test_bpd_iw2"] > 0 and metrics["importance_samples"] == 2
    # the fast-path switches reached the trainer's step; the rest kept the CPU's defaults
    assert metrics["fast_path"]["amp"] and metrics["fast_path"]["channels_last"] and not metrics["fast_path"]["compile"]
    assert metrics["parameters"] > 0 and metrics["model"] == "digits"
    # exact encoding with the EMA weights, counted over every test pixel evaluated
    assert metrics["decode_encode_mismatched_pixels"] == 0 and metrics["decode_encode_pixels"] == 50 * 64
    assert metrics["sampling_seconds_16"] > 0 and metrics["complete"], "every check ran"
    assert not (out_dir / ".metrics.json.tmp").exists()
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["at_seconds"] for r in records if "at_seconds" in r] == [1e-9], "eval_at_seconds reached the trainer"
    assert sum("train_bpd" in r for r in records) == 2, "log_every=2: two metric lines in four steps"
    for name in ("loss_curve.png", "samples.png", "metrics.jsonl", "ckpt_00000004.pt"):
        assert (out_dir / name).exists(), name
    executed = json.loads((tmp_path / "train.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
