"""What must stay at zero for the step to run as a CUDA graph and for sampling to run without waiting on the device,
counted on the `tiny` model with bench/proxies.py's counters (the ones behind bench/results/cpu-proxies-*.json):
host syncs in a training step between logging steps (reference and fast paths, the step alone and the trainer's
loop), host syncs in sampling, graph breaks in the compiled step and in sampling. Each counter is first shown to
see what it guards against, so a zero is not the counter's blindness."""
import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("proxies", ROOT / "bench" / "proxies.py")
proxies = importlib.util.module_from_spec(spec)
sys.path.insert(0, str(ROOT / "bench"))
spec.loader.exec_module(proxies)

from flowpp.fast import FastPath, TrainStep, count_dispatch  # noqa: E402
from flowpp.model import FlowPlusPlus  # noqa: E402

FAST = FastPath(amp=True, channels_last=True)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = FlowPlusPlus.from_config("tiny")
    x = proxies.benchlib.images_for(model.config, 4)
    return model.initialize(proxies.benchlib.images_for(model.config, 16)), x


def test_the_counters_see_what_they_guard_against(tiny):
    model, x = tiny
    step = TrainStep(copy.deepcopy(model), FastPath())
    step(x)
    # a logging step reads the statistics back: host syncs, seen by both counters
    assert count_dispatch(lambda: (step(x), step.read_stats()))["syncs"] >= 5
    assert proxies.profiled_step(lambda: (step(x), step.read_stats()))["syncs"] >= 5
    # a data-dependent shape in sampling is a sync too
    assert count_dispatch(lambda: model.sample(2)[model.sample(2) > 3])["syncs"] >= 1

    def broken(t):
        t = t * 2
        torch._dynamo.graph_break()
        return t + 1

    assert proxies.dynamo_graphs(broken, torch.ones(3))["graph_breaks"] == 1


@pytest.mark.parametrize("fast", [FastPath(), FAST], ids=["reference", "amp+channels_last"])
def test_no_host_sync_in_a_training_step_between_logging_steps(tiny, fast):
    model, x = tiny
    step = proxies.step_dispatch(model, fast, x)
    assert step["kernel_ops"] > 1000 and step["syncs"] == 0, step["syncs_by_op"]
    switches = {"reference": True} if fast.is_reference else {"amp": True, "channels_last": True}
    loop = proxies.loop_dispatch("tiny", {}, switches, batch=4, steps=3)
    assert loop["iterations_counted"] == 2 and loop["kernel_ops"] > 1000
    assert loop["syncs"] == 0, loop["syncs_by_op"]
    assert sum(loop["syncs_at_the_end_of_the_run"].values()) > 0, "the end of the run reads the statistics: seen"


@pytest.mark.parametrize("fast", [FastPath(), FAST], ids=["reference", "amp+channels_last"])
def test_no_host_sync_in_sampling(tiny, fast):
    counted = proxies.sample_dispatch(tiny[0], fast, 4)
    assert counted["kernel_ops"] > 1000 and counted["syncs"] == 0, counted["syncs_by_op"]


def test_no_graph_break_in_the_compiled_step_or_in_sampling(tiny):
    model, x = tiny
    compiled = proxies.compiled_step(model, FastPath(amp=True, channels_last=True, compile=True, compile_backend="eager"), x)
    assert compiled["unique_graphs"] >= 3 and compiled["graph_breaks"] == 0, compiled["graph_break_reasons"]
    assert compiled["per_step"]["syncs"] == 0, compiled["per_step"]["syncs_by_op"]
    assert compiled["per_step"]["extern_calls_in_compiled_regions"] > 100, "the profiler saw the compiled regions"
    # sampling: one coupling of each kind (dynamo traces every Newton iteration: a minute for all of `tiny`'s four)
    short = FlowPlusPlus.from_config("tiny", stages=("stripes:1", "squeeze", "channels:1")).initialize(x)
    sampling = proxies.dynamo_graphs(short.sample, 4)
    assert (sampling["graphs"], sampling["graph_breaks"]) == (1, 0), sampling["break_reasons"]
    assert sampling["ops_in_graphs"] > 1000, "the whole sampler is in the graph"
