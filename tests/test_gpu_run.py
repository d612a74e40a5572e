"""The GPU run script (bench/gpu_run.sh): its smoke run, every stage but `port` on the CPU with tiny sizes, each stage's
files written and holding finite numbers (bench/table.py reads what bench wrote); a rehearsal of the GPU call's own
command lines; the preparation of the carried data folder."""
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["env", "bench", "main", "ablations", "kernels", "scopes"]
# bench/run.py figures that are rates, times, sizes or counts: finite and strictly positive
POSITIVE = ["train_images_per_second", "train_step_ms", "train_first_step_seconds", "peak_memory_bytes",
            "peak_memory_gib", "eval_images_per_second", "eval_batch_size", "eval_warmup_seconds", "sample_seconds",
            "sample_seconds_min", "sample_images", "forward_gflop_per_image", "train_gflop_per_image_counted",
            "peak_matmul_tflops", "train_tflops", "fraction_of_peak", "profile_kernels_per_step",
            "profile_busy_ms_per_step", "profile_wall_ms_per_step"]


def numbers(obj, path=""):
    "Every number in a JSON value, with where it is."
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-run")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    # a protocol parameter given on the command line reaches the protocol's runs (and is recorded)
    proc = subprocess.run(["bash", "bench/gpu_run.sh", *STAGES, "--smoke", "--out", str(out), "--param", "ema_decay=0.99"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_every_stage_writes_its_files_with_finite_numbers(smoke):
    out, stdout = smoke
    for stage in STAGES:
        record = json.loads((out / f"{stage}.json").read_text())
        assert record["stage"] == stage and record["status"] == "ok", (stage, record["status"], stdout[-3000:])
        found = list(numbers(record["figures"]))
        assert len(found) > 5, (stage, record["figures"])
        bad = [(where, v) for where, v in found if not math.isfinite(v)]
        assert not bad, (stage, bad[:5])
        with tarfile.open(out / f"{stage}.tar.gz") as tar:
            names = tar.getnames()
        assert f"{stage}/log.txt" in names or stage == "env" and "env/env.json" in names, (stage, names)
        assert not any(n.endswith(".pt") for n in names), "checkpoints stay behind"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary) == sorted(STAGES) and all(s["status"] == "ok" for s in summary.values())
    assert "| stage | status |" in stdout and "port: not part of the smoke run" not in stdout


def test_env_stage(smoke):
    env = json.loads((smoke[0] / "env.json").read_text())["figures"]
    assert env["device"]["torch"] == torch.__version__ and env["card"] == "cpu"
    assert env["matmul"]["tflops"] > 0 and env["copy"]["gb_per_s"] > 0


def test_bench_stage_times_the_trainers_step(smoke):
    runs = json.loads((smoke[0] / "bench.json").read_text())["figures"]
    assert set(runs) == {"cpu-tiny-b8-reference", "cpu-tiny-b8-amp-channels-last"}, sorted(runs)
    for name, r in runs.items():
        assert r["schema"] == "flowpp-bench-v2" and r["complete"] and not r["errors"], (name, r["errors"])
        assert r["device"]["type"] == "cpu" and r["config"]["name"] == "tiny" and r["config"]["smoke"]
        f = r["figures"]
        for key in POSITIVE if name.endswith("reference") else ["train_images_per_second", "sample_seconds"]:
            assert isinstance(f[key], (int, float)) and math.isfinite(f[key]) and f[key] > 0, (name, key, f.get(key))
        assert f["train_losses_finite"] and f["train_nonfinite_steps"] == 0
        assert r["profile"]["top"] and r["profile"]["kernels_per_step"] > 100
        eq = f["equivalence"]
        assert eq["passed"] and eq["bpd_rel_diff"] <= 1e-3 and eq["grad_cosine"] > 0.99, eq
        assert r["vs_port_reference_md"]["comparable"] is False and "NOT COMPARABLE" in r["vs_port_reference_md"]["note"]
    ref, fast = runs["cpu-tiny-b8-reference"], runs["cpu-tiny-b8-amp-channels-last"]
    assert ref["options"] == {"amp": False, "amp_inverse": False, "channels_last": False, "compile": False,
                              "compile_scope": "block", "compile_mode": None, "compile_backend": "inductor",
                              "cuda_graph": False, "tf32": False, "kernels": False}
    assert fast["options"]["amp"] and fast["options"]["channels_last"] and not fast["options"]["cuda_graph"]
    assert ref["figures"]["decode_encode_exact"] and ref["figures"]["max_reconstruction_error_logit"] < 1e-3
    assert ref["figures"]["equivalence"]["bpd_rel_diff"] == 0, "the reference against itself"
    # the README's rows come from these files
    with tarfile.open(smoke[0] / "bench.tar.gz") as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(smoke[0] / "unpacked", **safe)
    files = sorted((smoke[0] / "unpacked" / "bench").glob("*.json"))
    rows = subprocess.run([sys.executable, "bench/table.py", *map(str, files)], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.splitlines()
    assert len(rows) == 2 + len(files) and rows[2].startswith("| fastest - compile - cuda_graph")


def test_protocol_stages_collect_the_runs(smoke):
    main = json.loads((smoke[0] / "main.json").read_text())["figures"]
    m = main["runs"]["main"]["metrics"]
    assert m["model"] == "cifar10" and m["steps"] == 2 and m["decode_encode_mismatched_pixels"] == 0
    assert m["test_bpd_iw2"] > 0 and main["protocol"]["runs"]["main"]["parameters"] == m["parameters"]
    assert main["protocol"]["runs"]["main"]["ema_decay"] == 0.99  # --param ema_decay=0.99
    ablations = json.loads((smoke[0] / "ablations.json").read_text())["figures"]
    models = {name: r["metrics"]["model"] for name, r in ablations["runs"].items()}
    assert models == {"uniform_dequantization": "cifar10_uniform_dequant", "affine_coupling": "cifar10_affine",
                      "no_attention": "cifar10_no_attention"}
    with tarfile.open(smoke[0] / "main.tar.gz") as tar:
        names = tar.getnames()
    # the layout results/cifar10_budget/ expects, ready to be copied there
    for f in ("protocol.json", "main/metrics.json", "main/metrics.jsonl", "main/samples.png", "main/train.ipynb"):
        assert f"main/cifar10_budget/{f}" in names, (f, names)


def test_kernels_stage(smoke):
    k = json.loads((smoke[0] / "kernels.json").read_text())["figures"]
    assert k["kernels"]["results"] and k["kernels"]["device"]["interpreter"]
    step = k["cpu-tiny-b8-kernels"]
    assert step["options"]["kernels"] and step["complete"] and step["figures"]["equivalence"]["passed"]


def test_scopes_stage(smoke):
    s = json.loads((smoke[0] / "scopes.json").read_text())["figures"]
    cost = s["cpu-compile-cost-tiny"]["scopes"]
    assert cost["block"]["trace"]["fx_nodes_forward"] < cost["step"]["trace"]["fx_nodes_forward"], cost
    for scope in ("block", "step"):
        run = s[f"cpu-tiny-b8-fastest-{scope}"]
        assert run["complete"] and run["options"]["compile"] and run["options"]["compile_scope"] == scope, run["options"]
        assert run["figures"]["train_images_per_second"] > 0


def test_bad_arguments_are_refused():
    for args, message in ((["nonsense"], "unknown argument"), ([], "name at least one stage"),
                          (["main", "--param", "torchcompile=false"], "one of the protocol's parameters"),
                          (["main", "--param", "runs=[]"], "one of the protocol's parameters"),
                          (["main", "--param", "torch_compile=False"], "must be JSON")):
        proc = subprocess.run(["bash", "bench/gpu_run.sh", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_prepare_device_copies_and_checks_the_shards(tmp_path):
    "prepare_device.sh --data-only: a relative data folder, checksums checked from inside the copy, clear refusals."
    import hashlib
    import shutil
    checkout = tmp_path / "checkout"  # the script writes next to itself: a copy keeps the real .device/ untouched
    (checkout / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "prepare_device.sh", checkout / "bench")
    data = tmp_path / "shared" / "data" / "cifar10"
    data.mkdir(parents=True)
    names = ["train_00.npz", "train_01.npz", "train_02.npz", "test_first1000.npz", "train_03.npz"]
    for i, name in enumerate(names):
        (data / name).write_bytes(bytes([i]) * 100)
    (data / "SHA256SUMS").write_text("".join(f"{hashlib.sha256((data / n).read_bytes()).hexdigest()}  {n}\n"
                                             for n in names))

    def prepare(*args):
        return subprocess.run(["bash", str(checkout / "bench" / "prepare_device.sh"), "--data-only", *args],
                              cwd=tmp_path / "shared", capture_output=True, text=True)

    proc = prepare("data/cifar10")  # relative to where the command runs, not to the checkout
    assert proc.returncode == 0 and "checked against SHA256SUMS" in proc.stdout, proc.stdout + proc.stderr
    copied = sorted(p.name for p in (checkout / ".device" / "data" / "cifar10").iterdir())
    assert copied == sorted(names[:4]), copied
    (data / "train_01.npz").write_bytes(b"corrupted")
    proc = prepare("data/cifar10")
    assert proc.returncode == 1 and "do not match" in proc.stderr, proc.stderr
    (data / "train_02.npz").unlink()
    proc = prepare("data/cifar10")
    assert proc.returncode == 1 and "has no train_02.npz" in proc.stderr, proc.stderr
    proc = prepare("data/cifar100")
    assert proc.returncode == 1 and "no folder" in proc.stderr, proc.stderr


REHEARSAL_SHIM = r'''
"""Stands in for python3 in a rehearsal of the GPU call: the benchmark scripts only parse their arguments (and run.py
builds its FastPath for a CUDA device), papermill only checks its parameters file; the rest runs for real."""
import importlib, json, os, sys
ROOT, LOG = os.environ["REHEARSAL_ROOT"], os.environ["REHEARSAL_LOG"]
args = sys.argv[1:]


def record(kind, detail):
    with open(LOG, "a") as f:
        f.write(json.dumps({"kind": kind, "detail": detail}) + "\n")


if args[:2] == ["-m", "papermill"]:
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import stages
    params = json.load(open(args[args.index("-f") + 1]))
    unknown = set(params) - stages.protocol_parameters() - stages.STAGE_OWNED
    assert not unknown, f"not parameters of the protocol notebook: {sorted(unknown)}"
    assert os.path.isfile(os.path.join(ROOT, args[2])), args[2]
    record("papermill", params)
    sys.exit(0)
if args and args[0].startswith("bench/") and args[0] != "bench/stages.py":
    sys.path[:0] = [os.path.join(ROOT, "bench"), ROOT]
    name = os.path.basename(args[0])[:-3]
    parsed = importlib.import_module(name).parse_args(args[1:])
    if name == "run":
        import torch
        sys.modules["run"].fast_path_from(parsed, torch.device("cuda"))
    record(name, args[1:])
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *args])
'''


def test_gpu_call_rehearsal_every_command_parses(tmp_path):
    """The GPU stages as a device call runs them (not the smoke run), with every benchmark command reduced to parsing
    its arguments: what CI can check of the command lines that only a GPU session executes."""
    shim = tmp_path / "shim.py"
    shim.write_text(REHEARSAL_SHIM)
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{shim}" "$@"\n')
    python.chmod(0o755)
    data = tmp_path / "cifar10"
    data.mkdir()
    for name in ("train_00.npz", "train_01.npz", "train_02.npz", "test_first1000.npz"):
        (data / name).write_bytes(b"")
    log, out = tmp_path / "commands.jsonl", tmp_path / "out"
    env = {**os.environ, "PYTHON": str(python), "PYTHONPATH": str(ROOT), "FLOWPP_CIFAR10": str(data),
           "REHEARSAL_ROOT": str(ROOT), "REHEARSAL_LOG": str(log), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", "bench/gpu_run.sh", "env", "port", "bench", "main", "ablations", "kernels", "scopes",
                           "--out", str(out), "--until", "3000", "--param", "torch_compile=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    has_port = (ROOT / ".device" / "port" / "models" / "flowplusplus" / "flowplusplus.py").is_file()
    for stage in ("env", "port", "bench", "main", "ablations", "kernels", "scopes"):
        status = json.loads((out / f"{stage}.json").read_text())["status"]
        assert status == ("failed" if stage == "port" and not has_port else "ok"), (stage, status, proc.stdout[-3000:])
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [c["kind"] for c in commands]
    assert kinds.count("run") == 7 and kinds.count("kernels") == 1 and kinds.count("env_probe") == 1, kinds
    assert kinds.count("compile_cost") == 1, kinds
    assert kinds.count("port_bench") == int(has_port), kinds
    protocol = [c["detail"] for c in commands if c["kind"] == "papermill"]
    assert [p["runs"] for p in protocol] == [["main"], ["uniform_dequantization"], ["affine_coupling"], ["no_attention"]]
    assert all(p["device"] == "cuda" and p["torch_compile"] is False for p in protocol), protocol
    assert all(p["data_path"] == str(data) for p in protocol)
    runs = [c["detail"] for c in commands if c["kind"] == "run"]
    assert not any("--smoke" in r or "--device" in r for r in runs), runs  # the GPU call's commands, not the smoke run's
    # the rehearsed env stage measured no card, so the files are named after the device torch sees (here the CPU)
    outs = [Path(r[r.index("--out") + 1]).name for r in runs if "--out" in r]
    assert len(outs) == 7 and all(name.startswith("cpu-cifar10-b64-") for name in outs), outs
