"""Score cloze candidates with a word-prediction model: continuation log-likelihood (causal LMs) or
mask filling (masked LMs). Single-token candidates share one forward pass per example."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .prompts import Cloze
from .runtime import Runtime


@dataclass
class _Item:
    example: int
    input_ids: list[int]
    targets: list[tuple[int, list[tuple[int, int]]]]  # (candidate, [(position, token id), ...])


def _space(prefix: str) -> str:
    return " " if prefix[-1:].isspace() else ""


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _causal_items(i: int, cloze: Cloze, tok: PreTrainedTokenizerBase, max_length: int) -> list[_Item]:
    prefix = cloze.prefix.rstrip()
    sep = _space(cloze.prefix)
    tail = cloze.suffix if cloze.continue_suffix else ""
    conts = [_encode(tok, sep + c + tail) for c in cloze.candidates]
    head = tok(prefix, add_special_tokens=True)["input_ids"]
    if all(len(c) == 1 for c in conts):
        head = head[-(max_length - 1) :] if max_length > 1 else head
        pos = len(head) - 1
        return [_Item(i, head, [(j, [(pos, c[0])]) for j, c in enumerate(conts)])]
    items = []
    for j, cont in enumerate(conts):
        keep = max(1, max_length - len(cont))
        ids = head[-keep:] + cont
        start = len(ids) - len(cont)
        items.append(_Item(i, ids, [(j, [(start - 1 + k, t) for k, t in enumerate(cont)])]))
    return items


def _wrap(tok: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """Add the tokenizer's special tokens around ``ids`` ([CLS] ... [SEP] for BERT, <s> ... </s> for RoBERTa)."""
    specials = tok("", add_special_tokens=True)["input_ids"]
    if len(specials) == 2:
        return [specials[0], *ids, specials[1]]
    if len(specials) == 1:
        return [*ids, specials[0]] if specials[0] in (tok.sep_token_id, tok.eos_token_id) else [specials[0], *ids]
    return list(ids)


def _masked_items(i: int, cloze: Cloze, tok: PreTrainedTokenizerBase, max_length: int) -> list[_Item]:
    sep = _space(cloze.prefix)
    n_special = len(tok("", add_special_tokens=True)["input_ids"])
    cands = [_encode(tok, sep + c) for c in cloze.candidates]
    lengths = sorted({len(c) for c in cands})
    items = []
    for n in lengths:
        pre = _encode(tok, cloze.prefix.rstrip() if sep else cloze.prefix)
        post = _encode(tok, cloze.suffix)
        budget = max_length - n - len(post) - n_special
        pre = pre[-budget:] if budget > 0 else []
        ids = _wrap(tok, pre + [tok.mask_token_id] * n + post)
        first = ids.index(tok.mask_token_id)
        targets = [
            (j, [(first + k, t) for k, t in enumerate(c)]) for j, c in enumerate(cands) if len(c) == n
        ]
        items.append(_Item(i, ids, targets))
    return items


def build_items(
    clozes: list[Cloze], tokenizer: PreTrainedTokenizerBase, family: str, max_length: int
) -> list[_Item]:
    build = _causal_items if family == "causal" else _masked_items
    return [item for i, c in enumerate(clozes) for item in build(i, c, tokenizer, max_length)]


def _logits_at(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor):
    """A function (row, positions) -> logits there. Decoder LMs apply their LM head only at those positions."""
    body, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if body is not None and head is not None:
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        return lambda r, positions: head(hidden[r, positions])
    logits = model(input_ids=ids, attention_mask=mask).logits
    return lambda r, positions: logits[r, positions]


def pad_batch(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask of token-id rows (on the CPU)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def forward_items(model: PreTrainedModel, items: list[_Item], pad: int,
                  runtime: Runtime | None = None) -> list[tuple[int, int, torch.Tensor]]:  # fmt: skip
    """(example, candidate, summed log-probability) for every target of a batch of items; keeps the graph."""
    ids, mask = (runtime or Runtime()).to(pad_batch([it.input_ids for it in items], pad))
    logits_at = _logits_at(model, ids, mask)
    out = []
    for r, it in enumerate(items):
        positions = sorted({p for _, pairs in it.targets for p, _ in pairs})
        logp = torch.log_softmax(logits_at(r, positions).float(), dim=-1)
        row = {p: k for k, p in enumerate(positions)}
        for j, pairs in it.targets:
            index_p = torch.tensor([row[p] for p, _ in pairs], device=logp.device)
            index_t = torch.tensor([t for _, t in pairs], device=logp.device)
            out.append((it.example, j, logp[index_p, index_t].sum()))
    return out


def candidate_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, family: str, clozes: list[Cloze], max_length: int,
    runtime: Runtime | None = None,
) -> tuple[list[torch.Tensor], int]:  # fmt: skip
    """Differentiable candidate scores of a batch of clozes (one tensor per cloze) and the tokens processed."""
    items = build_items(clozes, tokenizer, family, max_length)
    rows: list[dict[int, torch.Tensor]] = [{} for _ in clozes]
    for example, j, value in forward_items(model, items, pad_id(tokenizer), runtime):
        rows[example][j] = value
    scores = [torch.stack([row[j] for j in range(len(c.candidates))]) for row, c in zip(rows, clozes, strict=True)]
    return scores, sum(len(it.input_ids) for it in items)


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@torch.no_grad()
def score_clozes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    family: str,
    clozes: list[Cloze],
    batch_size: int = 16,
    max_length: int = 256,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> list[list[float]]:
    """Summed log-probability of every candidate of every cloze (one list per cloze)."""
    items = build_items(clozes, tokenizer, family, max_length)
    scores = [[0.0] * len(c.candidates) for c in clozes]
    order = sorted(range(len(items)), key=lambda k: len(items[k].input_ids))
    bar = tqdm(total=len(clozes), desc="scoring", unit="ex", disable=not progress)
    done: set[int] = set()
    for start in range(0, len(order), batch_size):
        batch = [items[k] for k in order[start : start + batch_size]]
        for example, j, value in forward_items(model, batch, pad_id(tokenizer), runtime):
            scores[example][j] = float(value)
            if example not in done:
                done.add(example)
                bar.update(1)
    bar.close()
    return scores
