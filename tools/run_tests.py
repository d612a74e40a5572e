"""Run the whole test suite and close with one line `N passed, N failed`.

Two parts, both always run:
1. `nbdev_test` over every notebook in `nbs/` (cells flagged with a `tst_flags` flag are skipped);
   one notebook is one test, failed when any of its cells raises.
2. `pytest tests/` for what does not belong in a notebook (e.g. that the export is in step), one worker per core.

Extra arguments go to `nbdev_test` (e.g. `--flags slow` to run the slow cells too).
"""
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ISOLATED = "09a_kernels.ipynb"  # run in a process of its own (see main)


def run_notebooks(extra_args):
    """Run nbdev_test, echoing its output; return (passed, failed) counted in notebooks."""
    cmd = [str(BIN / "nbdev_test"), "--do_print", "--timing", *extra_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started, failed, in_failed_list = [], [], False
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith("Starting "):
            started.append(Path(line[len("Starting "):].strip()).name)
        elif "nbdev Tests Failed On The Following Notebooks" in line:
            in_failed_list = True
        elif in_failed_list and line.startswith("\t"):
            failed.append(line.strip())
    code = proc.wait()
    if code != 0 and not failed:  # nbdev_test itself broke: count every notebook as failed
        failed = started or ["nbdev_test"]
    return len(started) - len(set(failed) & set(started)), len(failed)


def parallel_args() -> list[str]:
    """pytest-xdist's options for one worker per core, each taking whole files (a module's fixtures, such as the GPU
    run script's smoke run, then run once); none where xdist is missing or there is one core."""
    cores = os.cpu_count() or 1
    if cores < 2 or importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(cores), "--dist", "loadfile"]


def run_pytest():
    """Run pytest over tests/ (if present); return (passed, failed) counted in test cases."""
    if not (ROOT / "tests").is_dir():
        return 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        code = subprocess.call([str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *parallel_args(),
                                f"--junitxml={report}", "tests"], cwd=ROOT)
        if not report.exists():
            return 0, 1
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, fails, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        failed = fails + errors + (1 if code not in (0, 5) and fails + errors == 0 else 0)
        return total - fails - errors - skipped, failed


def main():
    os.environ.setdefault("MPLBACKEND", "Agg")
    # notebooks run two at a time on small machines: one thread each avoids oversubscribing the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if any("slow" in a for a in sys.argv[1:]):  # --flags slow: the slow cells also check this, for JupyterLab's sake
        os.environ["FLOWPP_RUN_SLOW"] = "1"
    start = time.time()
    # Triton's interpreter (the kernels notebook's tests on a CPU) must not share a process with notebooks that ran
    # other code first: nbdev_test reuses its worker processes, so that notebook gets an nbdev_test of its own
    nb_passed, nb_failed = run_notebooks([*sys.argv[1:], "--skip_file_re", f"^[_.]|{ISOLATED}"])
    alone_passed, alone_failed = run_notebooks([*sys.argv[1:], "--path", f"nbs/{ISOLATED}"])
    nb_passed, nb_failed = nb_passed + alone_passed, nb_failed + alone_failed
    py_passed, py_failed = run_pytest()
    print(f"\nnotebooks: {nb_passed} passed, {nb_failed} failed; pytest: {py_passed} passed, {py_failed} failed; "
          f"{time.time() - start:.0f} s")
    print(f"{nb_passed + py_passed} passed, {nb_failed + py_failed} failed")
    sys.exit(1 if nb_failed + py_failed or nb_passed + py_passed == 0 else 0)


if __name__ == "__main__":
    main()
