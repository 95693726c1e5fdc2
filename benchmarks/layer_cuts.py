"""Benchmark: which layer cut of a decoder can still learn a task? Dev accuracy of each cut before and after
a short gold-label fine-tuning (the `no_distill` recipe's CE over the verbalizer's candidates).

    .venv/bin/python benchmarks/layer_cuts.py --model results/assets/models/smollm2 --task results/tasks/sentiment \\
        --cuts uniform:6 bottom:6 uniform:15 bottom:15 --steps 64 [--dev 320] [--out results/bench/layer_cuts.json]

A cut is ``uniform:N`` (kdflow's default `layers: {strategy: uniform, count: N}`), ``first:N``, ``last:N``,
``bottom:N`` (the first N-1 layers and the last one) or an explicit list ``0,1,2,29``. Every cut starts from
the same weights, sees the same labelled training examples in the same seeded order (batch 8, AdamW, constant
learning rate) and is scored on the same first ``--dev`` dev examples; the table gives accuracy and the share
of the most frequent prediction (a student above 90 % is at the majority class).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from kdflow.errors import ConfigError  # noqa: E402
from kdflow.modeling import load_lm  # noqa: E402
from kdflow.prepare import load_prepared  # noqa: E402
from kdflow.scoring import candidate_scores, score_clozes  # noqa: E402
from kdflow.students import cut_layers, select_layers  # noqa: E402


def parse_cut(text: str, total: int) -> list[int]:
    """``strategy:N`` or a comma-separated list of layer indices -> the teacher layers kept."""
    if ":" not in text:
        return select_layers(total, {"strategy": "explicit", "list": [int(i) for i in text.split(",")]})
    strategy, _, count = text.partition(":")
    if strategy not in ("uniform", "first", "last", "bottom"):
        raise SystemExit(f"cut {text}: unknown strategy (uniform, first, last, bottom, or a list)")
    try:
        return select_layers(total, {"strategy": strategy, "count": int(count)})
    except ConfigError as err:
        raise SystemExit(f"cut {text}: {err}") from None


def evaluate(model: torch.nn.Module, tokenizer: Any, clozes: list, golds: list[int]) -> tuple[float, float]:
    """Dev accuracy and the share of the most frequent prediction."""
    model.eval()
    scores = score_clozes(model, tokenizer, "causal", clozes, 16, 128, progress=False)
    model.train()
    predictions = [max(range(len(s)), key=s.__getitem__) for s in scores]
    accuracy = sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds)
    return accuracy, Counter(predictions).most_common(1)[0][1] / len(predictions)


def measure(args: argparse.Namespace, keep: list[int]) -> dict[str, Any]:
    """One cut: accuracy before and after ``args.steps`` CE steps, and the training seconds."""
    torch.manual_seed(args.seed)
    order = random.Random(args.seed)
    model, tokenizer, family = load_lm(args.model)
    if family != "causal":
        raise SystemExit(f"{args.model}: this benchmark cuts decoder LMs (family {family})")
    cut_layers(model, keep)
    train, dev = load_prepared(args.task, "train"), load_prepared(args.task, "dev", args.dev)
    golds = [dev.labels.index(ex["label"]) for ex in dev.examples]
    labels = [train.labels.index(ex["label"]) for ex in train.examples]
    before = evaluate(model, tokenizer, dev.clozes, golds)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    indices: list[int] = []
    losses: list[float] = []
    started = time.perf_counter()
    for _ in range(args.steps):
        if len(indices) < args.batch_size:
            indices = list(range(len(train.clozes)))
            order.shuffle(indices)
        batch, indices = indices[: args.batch_size], indices[args.batch_size :]
        scores, _ = candidate_scores(model, tokenizer, "causal", [train.clozes[i] for i in batch], 128)
        loss = torch.nn.functional.cross_entropy(torch.stack(scores), torch.tensor([labels[i] for i in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - started
    after = evaluate(model, tokenizer, dev.clozes, golds)
    tail = losses[-min(16, len(losses)) :] or [float("nan")]
    return {
        "layers": keep,
        "accuracy_before": before[0],
        "top_class_before": before[1],
        "accuracy_after": after[0],
        "top_class_after": after[1],
        "train_loss_last16": sum(tail) / len(tail),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a causal LM folder (the teacher the students are cut from)")
    parser.add_argument("--task", required=True, help="a prepare_task folder (results/tasks/NAME)")
    parser.add_argument("--cuts", nargs="+", required=True)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dev", type=int, default=320, help="the first N dev examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="a JSON file for the rows")
    args = parser.parse_args(argv)
    total = json.loads((Path(args.model) / "config.json").read_text())["num_hidden_layers"]
    cuts = {text: parse_cut(text, total) for text in args.cuts}  # every cut checked before any training
    rows = []
    print(
        f"| cut | layers | accuracy before (top class) | after {args.steps} steps (top class) | train CE, last 16 | s |"
    )
    print("|---|---|---|---|---|---|")
    for text, keep in cuts.items():
        row = {"cut": text, **measure(args, keep)}
        rows.append(row)
        print(
            f"| {text} | {len(keep)} | {100 * row['accuracy_before']:.1f} ({100 * row['top_class_before']:.0f} %) | "
            f"{100 * row['accuracy_after']:.1f} ({100 * row['top_class_after']:.0f} %) | "
            f"{row['train_loss_last16']:.3f} | {row['seconds']:.0f} |",
            flush=True,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
