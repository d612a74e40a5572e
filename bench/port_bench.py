"""Benchmark the 2019 PyTorch port of Flow++ (github.com/chrischute/flowplusplus) on this machine, with the timing
method of bench/run.py, so that both run on the same card in the same call.

    bash bench/fetch_port.sh /work/.mirror/chrischute+flowplusplus/repo/.git     # once: .device/port (see bench/README.md)
    python3 bench/port_bench.py --out port.json                                  # a GPU: the CIFAR config at batch 64, fp32
    python3 bench/port_bench.py --smoke --out /tmp/port.json                     # a CPU: a small model, seconds

The port's code is read from --port-dir (never part of this repository). Its model is built as its train.py builds
it (scales ((0, 4), (2, 3)), 96 channels, 10 blocks, 2 dequantization blocks, 32 components, attention, dropout 0.2),
and one training step is the body of its train() loop as shipped: zero_grad, forward, its NLLLoss, `loss.item()`
(its progress bar's host read), backward, its per-group gradient clipping at 1.0, Adam over its two parameter
groups (weight decay 5e-5 on the weight-norm scales, lr 1e-3), its warm-up scheduler. On a GPU it runs inside
DataParallel on one device with cudnn.benchmark on, as its train.py does. Inputs are the 64 real CIFAR-10 test
images of nbs/fixtures scaled to [0, 1] as its ToTensor transform does (no flips: augmentation is not timed).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import ROOT  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SCHEMA = "flowpp-port-bench-v1"
# the phases in the order they run: the profile (its processing is slow: ~35,000 kernels a step) last
PHASES = ("train", "sample", "eval", "inverse", "flops", "profile")
CIFAR = dict(scales=((0, 4), (2, 3)), in_shape=(3, 32, 32), mid_channels=96, num_blocks=10, num_dequant_blocks=2,
             num_components=32, use_attn=True, drop_prob=0.2)  # the port's train.py defaults
SMOKE = dict(scales=((0, 2), (1, 1)), in_shape=(3, 8, 8), mid_channels=8, num_blocks=1, num_dequant_blocks=1,
             num_components=4, use_attn=True, drop_prob=0.2)  # the same code paths, small enough for a CPU test
PORT_LR, PORT_WEIGHT_DECAY, PORT_MAX_GRAD_NORM, PORT_WARM_UP_BATCHES = 1e-3, 5e-5, 1.0, 200  # its train.py defaults


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--port-dir", default=str(ROOT / ".device" / "port"), help="the port's checkout (bench/fetch_port.sh)")
    p.add_argument("--smoke", action="store_true", help="a small model on the CPU (8x8 crops), few iterations")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (4 with --smoke)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="default 256 (8 with --smoke)")
    p.add_argument("--warmup-iters", type=int, default=None, help="default 3 (1 with --smoke)")
    p.add_argument("--train-iters", type=int, default=None, help="default 10 (2 with --smoke)")
    p.add_argument("--eval-iters", type=int, default=None, help="default 3 (1 with --smoke)")
    p.add_argument("--sample-images", type=int, default=None, help="default 64 (4 with --smoke)")
    p.add_argument("--sample-repeats", type=int, default=None, help="default 3 (1 with --smoke)")
    p.add_argument("--profile-steps", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {PHASES}")
    p.add_argument("--data-parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the model in DataParallel on one GPU, as the port's train.py does (default: on with CUDA)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast around forward and loss (not as shipped)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions (not as shipped)")
    p.add_argument("--sdpa", action="store_true",
                   help="replace its attention's matmul-softmax-matmul by scaled_dot_product_attention (not as shipped)")
    args = p.parse_args(argv)
    s = args.smoke
    defaults = dict(batch_size=4 if s else 64, eval_batch_size=8 if s else 256, warmup_iters=1 if s else 3,
                    train_iters=2 if s else 10, eval_iters=1 if s else 3, sample_images=4 if s else 64,
                    sample_repeats=1 if s else 3)
    return benchlib.settle_args(p, args, defaults, PHASES)


def import_port(port_dir: Path):
    "The port's FlowPlusPlus class and util module, imported from its checkout; a clear error if it is not there."
    if not (port_dir / "models" / "flowplusplus" / "flowplusplus.py").is_file():
        raise SystemExit(f"the port is not at {port_dir}: prepare it with bench/fetch_port.sh (bench/README.md says how)")
    nn_py = (port_dir / "models" / "flowplusplus" / "nn.py").read_text()
    if "q *= key_depth_per_head" in nn_py:
        raise SystemExit(f"{port_dir} is the unfixed port (an in-place op on an attention view fails on current "
                         "PyTorch); prepare it with bench/fetch_port.sh, which applies the one-line fix")
    sys.path.insert(0, str(port_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        from models import FlowPlusPlus
        import util
    return FlowPlusPlus, util


def use_sdpa(FlowPlusPlusClass) -> None:
    "Swap the port's attention product for scaled_dot_product_attention (its queries are already scaled: scale=1)."
    from models.flowplusplus.nn import GatedAttn

    def dot_product_attention(self, q, k, v, bias=False):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.drop_prob if self.training else 0.0, scale=1.0)

    GatedAttn.dot_product_attention = dot_product_attention


class PortRun:
    def __init__(self, args):
        self.args, self.t_start = args, time.perf_counter()
        self.device = device = benchlib.pick_device(args.device)
        FlowPlusPlus, util = import_port(Path(args.port_dir))
        self.util = util
        if args.sdpa:
            use_sdpa(FlowPlusPlus)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
        torch.manual_seed(args.seed)
        import numpy as np
        import random
        random.seed(args.seed)
        np.random.seed(args.seed)  # the port initialises its 1x1 convolutions with numpy
        self.kwargs = SMOKE if args.smoke else CIFAR
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = FlowPlusPlus(**self.kwargs).to(device)
        data_parallel = args.data_parallel if args.data_parallel is not None else device.type == "cuda"
        self.net = torch.nn.DataParallel(self.module, [device.index or 0]) if data_parallel else self.module
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # its train.py: cudnn.benchmark = args.benchmark (default True)
        C, H, W = self.kwargs["in_shape"]
        real = benchlib.cifar10_fixture()[:, :C, :H, :W]
        self.x_real = real.float() / 255  # ToTensor: uint8 -> [0, 1]
        self.x_train = benchlib.tile(self.x_real, args.batch_size).to(device)
        self.loss_fn = util.NLLLoss().to(device)
        self.optimizer = torch.optim.Adam(util.get_param_groups(self.net, PORT_WEIGHT_DECAY, norm_suffix="weight_g"),
                                          lr=PORT_LR)
        warm_up = PORT_WARM_UP_BATCHES * args.batch_size
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1., s / warm_up))
        self.global_step, self.losses = 0, []
        self.figures: dict = {}
        self.result = {
            "schema": SCHEMA, "label": "2019 port" + (" (smoke)" if args.smoke else "") + "".join(
                f" + {n}" for n in ("amp", "tf32", "sdpa") if getattr(args, n)),
            "complete": False, "phases_done": [], "phases_requested": args.phases, "errors": {},
            "device": benchlib.device_info(device),
            "port": _port_source(Path(args.port_dir)),
            "config": {"model": {k: list(map(list, v)) if k == "scales" else v for k, v in self.kwargs.items()},
                       "parameters": sum(p.numel() for p in self.module.parameters()), "batch_size": args.batch_size,
                       "eval_batch_size": args.eval_batch_size, "warmup_iters": args.warmup_iters,
                       "train_iters": args.train_iters, "eval_iters": args.eval_iters,
                       "sample_images": args.sample_images, "sample_repeats": args.sample_repeats,
                       "data_parallel": data_parallel, "amp": args.amp, "tf32": args.tf32, "sdpa": args.sdpa,
                       "smoke": args.smoke, "seed": args.seed,
                       "data": "CIFAR-10 test images 0-63 (nbs/fixtures) / 255" + (", cropped" if args.smoke else "")},
            "figures": self.figures, "command": benchlib.command_line(),
        }

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.amp)

    def save(self):
        self.result["wall_seconds"] = time.perf_counter() - self.t_start
        benchlib.write_json(self.args.out, self.result)

    def step(self):
        "The body of the port's train() loop, as shipped."
        x = self.x_train
        self.optimizer.zero_grad()
        with self.autocast():
            z, sldj = self.net(x, reverse=False)
            loss = self.loss_fn(z, sldj)
        self.losses.append(loss.item())  # its loss_meter.update(loss.item(), ...)
        loss.backward()
        self.util.clip_grad_norm(self.optimizer, PORT_MAX_GRAD_NORM)
        self.optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scheduler.step(epoch) is deprecated
            self.scheduler.step(self.global_step)
        self.global_step += x.size(0)

    def train(self):
        a, device = self.args, self.device
        self.net.train()
        benchlib.reset_peak_memory(device)
        warm = [benchlib.time_once(self.step, device) for _ in range(a.warmup_iters)]
        seconds = benchlib.time_loop(self.step, a.train_iters, device)
        mem = benchlib.peak_memory(device)
        bpd = [l / (math.log(2) * math.prod(self.kwargs["in_shape"])) for l in self.losses]
        self.figures.update(train_images_per_second=a.batch_size * a.train_iters / seconds,
                            train_step_ms=1000 * seconds / a.train_iters, train_first_step_seconds=warm[0] if warm else None,
                            train_warmup_seconds=warm, peak_memory_bytes=mem["bytes"], peak_memory_gib=mem["gib"],
                            peak_memory_kind=mem["kind"], train_bpd_last=bpd[-1],
                            train_losses_finite=all(math.isfinite(b) for b in bpd))

    def profile(self):
        prof = benchlib.profile_steps(self.step, self.device, steps=self.args.profile_steps)
        self.result["profile"] = prof
        self.figures.update(benchlib.profile_figures(prof, self.figures.get("train_step_ms")))

    @torch.no_grad()
    def _sample(self):
        "Its train.py's sample(): z ~ N(0, I), the flow reversed (100-step bisection), then a sigmoid."
        z = torch.randn((self.args.sample_images, *self.kwargs["in_shape"]), dtype=torch.float32, device=self.device)
        with self.autocast():
            x, _ = self.net(z, reverse=True)
        return torch.sigmoid(x)

    def sample(self):
        a, device = self.args, self.device
        self.net.eval()
        try:
            warm = benchlib.time_once(self._sample, device)
            times = [benchlib.time_once(self._sample, device) for _ in range(a.sample_repeats)]
        finally:
            self.net.train()
        self.figures.update(sample_seconds=statistics.median(times), sample_seconds_min=min(times),
                            sample_images=a.sample_images, sample_warmup_seconds=warm)

    def flops(self):
        x = self.x_train[:min(4, len(self.x_train))]
        self.module.eval()
        try:
            with torch.no_grad():
                fwd = benchlib.flop_count(lambda: self.module(x))
        finally:
            self.module.train()
        self.figures.update(forward_gflop_per_image=fwd["total"] / len(x) / 1e9,
                            forward_flop_by_op_per_image={k: v / len(x) for k, v in fwd["by_op"].items()})

    def eval(self):
        "Its test() loop's body at eval_batch_size: forward, NLLLoss, loss.item(), under no_grad in eval mode."
        a, device = self.args, self.device
        x = benchlib.tile(self.x_real, a.eval_batch_size).to(device)

        def batch():
            with self.autocast():
                z, sldj = self.net(x, reverse=False)
                loss = self.loss_fn(z, sldj)
            return loss.item()

        self.net.eval()
        try:
            with torch.no_grad():
                warm = benchlib.time_once(batch, device)
                seconds = benchlib.time_loop(batch, a.eval_iters, device)
        finally:
            self.net.train()
        self.figures.update(eval_images_per_second=a.eval_batch_size * a.eval_iters / seconds,
                            eval_batch_size=a.eval_batch_size, eval_warmup_seconds=warm)

    @torch.no_grad()
    def inverse(self):
        "Largest |f^-1(f(y)) - y| in logit space on 64 real images (float32): y = its to_logits of the dequantized x."
        m = self.module
        m.eval()
        try:
            x = self.x_real[:64].to(self.device)
            sldj = torch.zeros(len(x), device=self.device)
            xd, sldj = m.dequantize(x, sldj)
            y, sldj = m.to_logits(xd, sldj)
            z, _ = m.flows(y, sldj, False)
            y_back, _ = m.flows(z, sldj, True)
        finally:
            m.train()
        self.figures.update(max_reconstruction_error_logit=(y_back - y).abs().max().item(), inverse_images=len(x))


def _port_source(port_dir: Path) -> dict:
    import json
    f = port_dir / "PORT_SOURCE.json"
    return json.loads(f.read_text()) if f.is_file() else {"dir": str(port_dir), "note": "no PORT_SOURCE.json"}


def main(argv=None) -> dict:
    args = parse_args(argv)
    run = PortRun(args)
    run.save()
    failed = benchlib.run_phases(run, args.phases)
    f = run.figures
    show = lambda key, fmt: (fmt.format(f[key]) if isinstance(f.get(key), (int, float)) else "-")
    print(f"{run.result['label']} on {run.result['device']['name']} ({run.result['config']['parameters']:,} parameters, "
          f"batch {args.batch_size}): train {show('train_images_per_second', '{:.1f}')} img/s, "
          f"eval {show('eval_images_per_second', '{:.1f}')} img/s, sample {args.sample_images} in "
          f"{show('sample_seconds', '{:.3f}')} s, peak memory {show('peak_memory_gib', '{:.2f}')} GiB -> {args.out}", flush=True)
    if failed:
        raise SystemExit(f"phases failed: {failed} (see 'errors' in {args.out})")
    return run.result


if __name__ == "__main__":
    main()
