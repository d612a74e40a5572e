"""Print the README's results rows (markdown) from benchmark JSON files: python bench/table.py bench/results/*.json"""
import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    r = json.loads(path.read_text())
    f, d, c = r["figures"], r["device"], r["config"]
    eq = f.get("equivalence") or {}
    threads = f"{d['cpu_threads']} thread" + ("s" if d["cpu_threads"] != 1 else "")
    device = f"{d['name']} ({'CPU, ' + threads if d['type'] == 'cpu' else 'GPU'})"
    memory = f"{f['peak_memory_gib']:.2f} GiB" + (" (process RSS)" if d["type"] == "cpu" else "")
    cells = [r["label"] + (" (CPU smoke)" if c.get("smoke") else ""), device, f"{c['name']}, {c['batch_size']}",
             f"{f['train_images_per_second']:.1f}", memory,
             f"{f['eval_images_per_second']:.1f} ({f['eval_batch_size']})", f"{f['sample_seconds']:.3f} s",
             f"{f['max_reconstruction_error_logit']:.1e}", str(f["decode_encode_exact"]),
             f"{f['forward_gflop_per_image']:.4g}", f"{100 * f['fraction_of_peak']:.1f}%",
             f"{eq['bpd_rel_diff']:.1e}" if eq else "-", f"{eq['grad_cosine']:.6f}" if eq else "-",
             f"[{path.name}](results/{path.name})"]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    print("\n".join(row(Path(p)) for p in sys.argv[1:]))
