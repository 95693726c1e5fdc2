"""Benchmark: what `group_by_length` saves. Per prepared task folder, the padded tokens of a batch of 8 over the
first ``--batches`` steps of the deterministic schedule (every example's scoring items padded to the batch's
longest, as a word-prediction student's step runs them), plain and grouped; with ``--steps N``, the wall time
of N gold-label CE steps of ``--model`` (the `no_distill` recipe: forward, backward, AdamW) on each schedule.

    .venv/bin/python benchmarks/length_grouping.py --model results/assets/models/smollm2 \\
        --task results/tasks/sentiment [--task ...] [--steps 16] [--out results/bench/length_grouping.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from kdflow.finetune import gold_target  # noqa: E402
from kdflow.losses.base import target_cross_entropy  # noqa: E402
from kdflow.modeling import load_lm  # noqa: E402
from kdflow.prepare import load_prepared  # noqa: E402
from kdflow.scoring import build_items, candidate_scores  # noqa: E402
from kdflow.train.settings import TrainSettings, batch_indices, seed_everything  # noqa: E402

BATCH = 8


def schedule(n: int, lengths: tuple[int, ...], steps: int, grouped: bool) -> list[list[int]]:
    """The example indices of the first ``steps`` batches, as kdflow's training loop draws them (seed 1234)."""
    settings = TrainSettings(steps=steps, batch_size=BATCH, seed=1234, group_by_length=grouped)
    return [batch_indices(n, s, 0, settings, lengths) for s in range(steps)]


def padded_tokens(batches: list[list[int]], items: dict[int, list[int]]) -> float:
    """Mean padded tokens per batch: every scoring item of the batch padded to its longest."""
    return statistics.fmean(max(x for i in b for x in items[i]) * sum(len(items[i]) for i in b) for b in batches)


def time_steps(model: torch.nn.Module, tokenizer: Any, data: Any, batches: list[list[int]]) -> float:
    """Seconds of gold-label CE steps on ``batches`` (a fresh copy of the weights each time)."""
    seed_everything(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    targets = [gold_target(data.task, data.labels, ex) for ex in data.examples]
    model.train()
    start = time.perf_counter()
    for b in batches:
        scores, _ = candidate_scores(model, tokenizer, "causal", [data.clozes[i] for i in b], 128)
        loss = sum(target_cross_entropy(targets[i], s) for s, i in zip(scores, b)) / len(b)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    model.load_state_dict(state)
    return seconds


def measure(args: argparse.Namespace, task: str, model: Any, tokenizer: Any) -> dict[str, Any]:
    data = load_prepared(task, "train", transfer_set=False)
    items: dict[int, list[int]] = {}
    for item in build_items(data.clozes, tokenizer, "causal", 128):
        items.setdefault(item.example, []).append(len(item.input_ids))
    lengths = tuple(sum(items[i]) for i in range(len(data.clozes)))
    row: dict[str, Any] = {"task": data.meta["name"], "examples": len(lengths)}
    for grouped in (False, True):
        batches = schedule(len(lengths), lengths, args.batches, grouped)
        row[f"padded tokens, {'grouped' if grouped else 'plain'}"] = padded_tokens(batches, items)
        if args.steps:
            row[f"seconds, {'grouped' if grouped else 'plain'}"] = time_steps(
                model, tokenizer, data, batches[: args.steps]
            )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a causal LM folder (its tokenizer; the timed model)")
    parser.add_argument("--task", action="append", required=True, help="a prepared task folder (repeatable)")
    parser.add_argument("--batches", type=int, default=128, help="schedule steps whose padding is counted")
    parser.add_argument("--steps", type=int, default=0, help="timed CE steps per schedule (0: padding only)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer, family = load_lm(args.model)
    if family != "causal":
        raise SystemExit(f"{args.model}: a causal LM is needed (the scoring items of a word-prediction student)")
    rows = [measure(args, task, model, tokenizer) for task in args.task]
    timed = " s plain | s grouped |" if args.steps else ""
    print("| task | examples | padded tokens per batch of 8, plain | grouped | ratio |" + timed)
    for r in rows:
        plain, grouped = r["padded tokens, plain"], r["padded tokens, grouped"]
        line = f"| {r['task']} | {r['examples']} | {plain:.0f} | {grouped:.0f} | {grouped / plain:.2f} |"
        print(line + (f" {r['seconds, plain']:.1f} | {r['seconds, grouped']:.1f} |" if args.steps else ""))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
