"""bench/'s pieces that need no model run: the fast path and label from the options, refused options, the
profiler's busy-time arithmetic, and bench/table.py's refusal of an older schema. (The benchmark itself runs end
to end in tests/test_gpu_run.py, the smoke run of bench/gpu_run.sh.)"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import benchlib  # noqa: E402


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load("run")
cpu = torch.device("cpu")


def test_paths_and_switches():
    from flowpp.fast import FastPath
    args = run.parse_args(["--out", "x.json", "--path", "fastest", "--no-cuda-graph", "--compile-backend", "aot_eager"])
    fast = run.fast_path_from(args, cpu)
    assert fast == FastPath(amp=True, channels_last=True, compile=True, compile_backend="aot_eager")
    assert run.label_of(args, fast) == "fastest compile_backend=aot_eager - cuda_graph"
    args = run.parse_args(["--out", "x.json", "--amp", "--channels-last"])
    fast = run.fast_path_from(args, cpu)
    assert fast == FastPath(amp=True, channels_last=True) and run.label_of(args, fast) == "reference + amp + channels_last"
    assert run.fast_path_from(run.parse_args(["--out", "x", "--path", "default"]), cpu).is_reference
    assert run.fast_path_from(run.parse_args(["--out", "x", "--kernels"]), cpu) == FastPath(kernels=True)
    with pytest.raises(ValueError, match="needs a CUDA device"):  # the trainer's GPU step asked for on a CPU
        run.fast_path_from(run.parse_args(["--out", "x", "--path", "fastest"]), cpu)


@pytest.mark.parametrize("flag", ["--fused-adam", "--compile-budget-s=600"])
def test_removed_options_are_refused(flag, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--out", "x.json", flag])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_unknown_phase_is_refused(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--out", "x.json", "--phases", "train,warp"])
    assert "unknown phases ['warp']" in capsys.readouterr().err


def test_busy_time_is_the_union_of_intervals():
    assert benchlib._union_us([(0, 10), (5, 12), (20, 25)]) == 17  # overlap counted once, the gap not at all
    assert benchlib._union_us([(3, 4), (0, 10)]) == 10  # a kernel inside another's interval adds nothing
    assert benchlib._union_us([]) == 0


def test_table_refuses_an_older_schema(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": "flowpp-bench-v1", "figures": {}}))
    proc = subprocess.run([sys.executable, "bench/table.py", str(old)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "is not one of" in proc.stderr, proc.stderr


def test_card_names():
    assert benchlib.card_slug(cpu) == "cpu"
    names = {"NVIDIA H200": "h200", "NVIDIA H100 80GB HBM3": "h100", "NVIDIA A100-SXM4-80GB": "a100",
             "Tesla V100-SXM2-16GB": "v100", "NVIDIA GeForce RTX 4090": "gpu"}
    assert {name: benchlib.gpu_slug(name) for name in names} == names


def test_a_protocol_run_cut_by_the_time_limit_keeps_its_evaluations(tmp_path):
    stages = load("stages")
    work, out = tmp_path / "main", tmp_path / "out"
    run = work / "runs" / "main"
    run.mkdir(parents=True)
    lines = [{"step": 50, "train_seconds": 30.1, "train_bpd": 5.1},
             {"step": 90, "train_seconds": 60.2, "test_bpd": 4.9, "test_bpd_stderr": 0.02, "at_seconds": 60.0}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (run / "ckpt_00000090.pt").write_bytes(b"not collected")
    record = stages.pack("main", work, out, "timeout", 465.0, 465.0)
    assert record["status"] == "timeout" and record["figures"]["recovered_partial_runs"] == ["main"]
    main = record["figures"]["runs"]["main"]
    assert main["metrics"] is None and main["evaluations"] == lines[1:] and main["last_train_line"] == lines[0]
    assert json.loads((out / "main.json").read_text())["figures"]["runs"]["main"]["evaluations"][0]["at_seconds"] == 60.0
    import tarfile
    with tarfile.open(out / "main.tar.gz") as tar:
        assert tar.getnames() == ["main/cifar10_budget/main/metrics.jsonl"], "collected; the run folder stays behind"


def test_a_protocol_run_cut_during_its_checks_keeps_what_they_measured(tmp_path):
    "Cut after training, during the checks: its partial metrics.json and the trainer's grid come back; its entry says cut."
    stages = load("stages")
    work, out = tmp_path / "main", tmp_path / "out"
    run, results = work / "runs" / "main", work / "cifar10_budget"
    run.mkdir(parents=True)
    results.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 900, "train_seconds": 360.0, "test_bpd": 3.6,
                                                   "test_bpd_stderr": 0.01}) + "\n")
    partial = {"steps": 900, "test_bpd": 3.6, "decode_encode_mismatched_pixels": 0, "complete": False}
    (run / "metrics.json").write_text(json.dumps(partial))
    (run / "samples_00000900.png").write_bytes(b"png")
    earlier = {"status": "done", "model": "cifar10_affine"}  # a run of an earlier call, already collected
    (results / "protocol.json").write_text(json.dumps({"runs": {"main": {"status": "started", "model": "cifar10"},
                                                                "affine_coupling": earlier}}))
    record = stages.pack("main", work, out, "timeout", 470.0, 470.0)
    assert record["figures"]["recovered_partial_runs"] == ["main"]
    assert record["figures"]["runs"]["main"]["metrics"] == partial
    protocol = record["figures"]["protocol"]
    assert protocol["runs"]["main"]["status"] == "cut" and protocol["runs"]["affine_coupling"] == earlier
    import tarfile
    with tarfile.open(out / "main.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"main/cifar10_budget/main/metrics.json", "main/cifar10_budget/main/samples_00000900.png",
            "main/cifar10_budget/protocol.json"} <= names, names


def test_gpu_run_skips_what_the_overall_limit_leaves_no_time_for(tmp_path):
    proc = subprocess.run(["bash", "bench/gpu_run.sh", "env", "--smoke", "--until", "3", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                                      "PYTHON": sys.executable})
    assert proc.returncode == 0 and "env skipped" in proc.stdout, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "env.json").read_text())["status"] == "skipped"
