"""LoRA vs full fine-tuning on the LLM backbone (smollm2-135m): step time, peak memory, stored bytes.

What is measured (CPU, float32, one process per mode so neither sees the other's memory):

- `lora_step_ratio`: median training-step time with `--strategy lora` (r 8 on q/k/v/o of all 30 layers)
  divided by the same step of full fine-tuning. Same batch (fortunes texts cut to the same token length),
  same head, AdamW over the recipe's parameter groups (headstart.train.groups.param_groups after
  set_trainable), forward + cross-entropy + backward + optimizer step. As in the training loop, the LoRA
  step runs the frozen embeddings group without autograd and enters at the first group with adapters.
- `lora_peak_mb` / `full_peak_mb`: the process's peak resident set (Linux VmHWM) over the timed steps,
  reset to the current RSS right after the model is loaded (/proc/self/clear_refs), so it counts the
  resident weights + gradients + optimizer state + activations of training, not the one-off loading
  peak (`load_peak_mb`, reported apart). torch's CPU allocations are all in RSS, which tracemalloc would
  not see.
- `adapter_bytes`: the safetensors file of the adapter tensors (what a LoRA run stores beside the head);
  `full_bytes`: the bytes of every base tensor, which a full fine-tune's delta must store.

Run: `.venv/bin/python benchmarks/lora.py [--quick]` (quick: batch 4 x 32 tokens, 3 timed steps; default:
batch 8 x 64 tokens, 5 timed steps). The last stdout line is the JSON result.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, current_rss_mb, emit_json, machine_load, peak_rss_mb, reset_peak_rss, rnd

KEYS = ["lora_step_ratio", "lora_peak_mb", "full_peak_mb", "adapter_bytes", "full_bytes"]
BACKBONE = "smollm2-135m"
FORTUNES = REPO / "examples" / "fortunes" / "fortunes.csv"


def _batch(bb: Any, n: int, tokens: int) -> tuple[dict[str, Any], Any]:
    """n fortunes of at least `tokens` tokens, cut to exactly `tokens` (no padding), and their labels."""
    import torch

    with open(FORTUNES, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    ids, labels = [], []
    for r in rows:
        enc = bb.load_item(r["text"])
        if len(enc) >= tokens:
            ids.append(list(enc)[:tokens])
            labels.append(classes.index(r["label"]))
        if len(ids) == n:
            break
    x = {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), tokens, dtype=torch.long)}
    return x, torch.tensor(labels)


def run_mode(mode: str, batch: int, tokens: int, steps: int) -> dict[str, Any]:
    """One mode in this process: load, time `steps` training steps after one warm-up, read the peak."""
    import torch
    import torch.nn.functional as F

    from headstart.backbones import create_backbone
    from headstart.recipes import get_recipe
    from headstart.train.groups import Net, first_trainable_group, param_groups, set_trainable

    torch.manual_seed(0)
    bb = create_backbone(BACKBONE)
    recipe = get_recipe("lora" if mode == "lora" else "full", len(bb.groups))
    phase = recipe.phases[-1]
    out: dict[str, Any] = {}
    if recipe.adapter is not None:
        from safetensors.torch import save

        from headstart.adapters import adapter_state, inject_adapter

        info = inject_adapter(bb, recipe.adapter)
        out["adapter_bytes"] = len(save(adapter_state(bb)))
        out["adapter_modules"] = info["n_modules"]
    out["full_bytes"] = sum(
        v.numel() * v.element_size() for k, v in bb.state_dict().items() if ".lora_" not in k
    )
    x, y = _batch(bb, batch, tokens)
    head = torch.nn.Linear(bb.embed_dim, int(y.max()) + 1)
    net = Net(bb, head)
    n = phase.n_trainable(len(bb.groups))
    set_trainable(bb, head, n)
    k = first_trainable_group(bb, n)
    opt = torch.optim.AdamW(param_groups(bb, head, phase))
    out["trainable_params"] = sum(p.numel() for g in opt.param_groups for p in g["params"])
    out["load_peak_mb"] = rnd(peak_rss_mb(), 1)
    out["after_load_mb"] = rnd(current_rss_mb(), 1)
    out["peak_reset"] = reset_peak_rss()

    def step() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():  # the frozen prefix, as the training loop runs it
            h = bb.forward_groups(x, 0, k) if k > 0 else x
        loss = F.cross_entropy(net(h, k), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step()  # warm-up: the optimizer's state is allocated here
    times = [step() for _ in range(steps)]
    out.update(
        mode=mode,
        entry_group=k,
        step_s=rnd(statistics.median(times), 3),
        step_times_s=[rnd(t, 3) for t in times],
        peak_mb=rnd(peak_rss_mb(), 1),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mode", choices=["lora", "full"], help=argparse.SUPPRESS)  # the per-mode subprocess
    args = ap.parse_args()
    batch, tokens, steps = (4, 32, 3) if args.quick else (8, 64, 5)
    if args.mode:
        print(json.dumps(run_mode(args.mode, batch, tokens, steps)), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    results: dict[str, dict[str, Any]] = {}
    # No feature cache is involved; the dequantised LLM is read from headstart's usual cache.
    for mode in ("full", "lora"):
        cmd = [sys.executable, __file__, "--mode", mode] + (["--quick"] if args.quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{mode}: {results[mode]}", file=sys.stderr)
    lora, full = results["lora"], results["full"]
    emit_json(
        {
            "backbone": BACKBONE,
            "batch": batch,
            "tokens": tokens,
            "threads": env["OMP_NUM_THREADS"],
            "lora_step_ratio": rnd(lora["step_s"] / full["step_s"], 3),
            "lora_step_s": lora["step_s"],
            "full_step_s": full["step_s"],
            "lora_peak_mb": lora["peak_mb"],
            "full_peak_mb": full["peak_mb"],
            "lora_after_load_mb": lora["after_load_mb"],
            "full_after_load_mb": full["after_load_mb"],
            "peak_is_training_only": bool(lora["peak_reset"] and full["peak_reset"]),
            "adapter_bytes": lora["adapter_bytes"],
            "full_bytes": lora["full_bytes"],
            "lora_trainable_params": lora["trainable_params"],
            "full_trainable_params": full["trainable_params"],
            "load": machine_load(),
        },
        KEYS,
    )


if __name__ == "__main__":
    main()
