"""Print bench/README.md's results rows (markdown) from benchmark JSON files.

    python3 bench/table.py bench/results/h200-cifar10-*.json bench/results/h200-port-*.json   # rows of run.py and port_bench.py runs
    python3 bench/table.py --port bench/results/h200-port-cifar10-b64.json bench/results/h200-cifar10-*.json

With --port, each row of ours gets the ratios to the port measured on the same card (train and eval img/s, ours over
the port's; sampling and memory, the port's over ours: above 1 is faster or smaller); rows from another card or
config than the port's say so instead.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SCHEMAS = ("flowpp-bench-v2", "flowpp-port-bench-v1")
HEADER = ("| run | device | torch | config, batch | train img/s | step ms | GPU busy / wall ms per step (kernels) | "
          "peak memory | first step s (capture s) | eval img/s (batch) | sample s (images) | max inverse error (logit) | "
          "decode(encode(x)) == x | bpd rel. diff | grad cosine | vs port: train, eval, sample, memory | JSON |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|")


def _num(v, spec: str) -> str:
    return spec.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"


def load(path: Path) -> dict:
    r = json.loads(Path(path).read_text())
    if r.get("schema") not in SCHEMAS:
        raise SystemExit(f"{path}: schema {r.get('schema')!r} is not one of {SCHEMAS} (an older benchmark JSON?)")
    return r


def ratios(r: dict, port: dict | None) -> str:
    "Ours against the port measured on the same card: x faster / x less memory, or why not comparable."
    if port is None or r["schema"] == "flowpp-port-bench-v1":
        return "-"
    if r["device"]["name"] != port["device"]["name"]:
        return f"not comparable (port on {port['device']['name']})"
    f, p = r["figures"], port["figures"]
    if r["config"].get("name") != "cifar10" or r["config"]["batch_size"] != port["config"]["batch_size"]:
        return "not comparable (another config or batch)"
    def ratio(a, b):
        return f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0 else "-"
    return ", ".join([ratio(f.get("train_images_per_second"), p.get("train_images_per_second")),
                      ratio(f.get("eval_images_per_second"), p.get("eval_images_per_second")),
                      ratio(p.get("sample_seconds"), f.get("sample_seconds")),
                      ratio(p.get("peak_memory_gib"), f.get("peak_memory_gib"))])


def row(path: Path, port: dict | None = None, link_dir: str = "results") -> str:
    r = load(path)
    f, d, c = r["figures"], r["device"], r["config"]
    eq = f.get("equivalence") or {}
    cpu = d["type"] == "cpu"
    threads = f"{d['cpu_threads']} thread" + ("s" if d["cpu_threads"] != 1 else "")
    device = f"{d['name']} ({'CPU, ' + threads if cpu else 'GPU'})"
    config = (f"{c['name']}, {c['batch_size']}" if "name" in c else
              f"port {'smoke' if c.get('smoke') else 'CIFAR'} ({c['parameters'] / 1e6:.1f} M), {c['batch_size']}")
    label = r["label"] + (" (CPU smoke)" if c.get("smoke") and "smoke" not in r["label"] else "") \
        + ("" if r.get("complete", True) else f" (partial: {', '.join(r.get('phases_done', []))})")
    busy = f.get("profile_busy_ms_per_step")
    profile = (f"{_num(busy, '{:.1f}')} / {_num(f.get('profile_wall_ms_per_step'), '{:.1f}')} "
               f"({_num(f.get('profile_kernels_per_step'), '{:,.0f}')})") if busy is not None else "-"
    memory = _num(f.get("peak_memory_gib"), "{:.2f} GiB") + (" (process RSS)" if cpu and "peak_memory_gib" in f else "")
    first = _num(f.get("train_first_step_seconds"), "{:.1f}") + (f" ({_num(f['capture_seconds'], '{:.1f}')})"
                                                                  if f.get("capture_seconds") else "")
    cells = [label, device, d["torch"], config, _num(f.get("train_images_per_second"), "{:.1f}"),
             _num(f.get("train_step_ms"), "{:.1f}"), profile, memory, first,
             f"{_num(f.get('eval_images_per_second'), '{:.1f}')} ({f.get('eval_batch_size', '-')})",
             f"{_num(f.get('sample_seconds'), '{:.3f}')} ({f.get('sample_images', '-')})", _num(f.get("max_reconstruction_error_logit"), "{:.1e}"),
             str(f.get("decode_encode_exact", "-")), _num(eq.get("bpd_rel_diff"), "{:.1e}"),
             _num(eq.get("grad_cosine"), "{:.6f}"), ratios(r, port), f"[{Path(path).name}]({link_dir}/{Path(path).name})"]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--port", type=Path, default=None, help="the port's JSON from the same card (bench/port_bench.py)")
    ap.add_argument("--no-header", action="store_true")
    ap.add_argument("--link-dir", default="results", help="where the README links the JSON files")
    args = ap.parse_args(argv)
    port = load(args.port) if args.port else None
    lines = ([] if args.no_header else [HEADER]) + [row(p, port, args.link_dir) for p in args.files]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(main() and 0)
