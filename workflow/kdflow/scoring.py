"""Score cloze candidates with a word-prediction model: continuation log-likelihood (causal LMs) or
mask filling (masked LMs). Single-token candidates share one forward pass per example.

Causal scoring follows lm-evaluation-harness's loglikelihood: the context is the text before the slot with
its trailing whitespace moved to the front of each candidate (exactly, not normalised to one space); the
context is tokenised with the tokenizer's special tokens (``add_special_tokens``: a BOS where the
tokenizer's post-processor adds one, as lm-eval 0.4.13 does by default; ``False`` as lm-eval's
``add_bos_token=False``) and each continuation without; a sequence longer than ``max_length`` + 1 tokens
loses tokens from the left, and the model sees at most ``max_length`` of them (the last continuation
token is predicted, never fed)."""

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
    truncated: bool = False  # the context lost tokens on the left to fit max_length


def _space(prefix: str) -> str:
    return " " if prefix[-1:].isspace() else ""


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _causal_items(
    i: int, cloze: Cloze, tok: PreTrainedTokenizerBase, max_length: int, add_special_tokens: bool = True
) -> list[_Item]:
    prefix = cloze.prefix.rstrip()
    sep = cloze.prefix[len(prefix) :]
    tail = cloze.suffix if cloze.continue_suffix else ""
    conts = [_encode(tok, sep + c + tail) for c in cloze.candidates]
    head = tok(prefix, add_special_tokens=add_special_tokens)["input_ids"]
    if all(len(c) == 1 for c in conts):
        ids = head[-max_length:]
        pos = len(ids) - 1
        return [_Item(i, ids, [(j, [(pos, c[0])]) for j, c in enumerate(conts)], len(head) > max_length)]
    items = []
    for j, cont in enumerate(conts):
        keep = max(max_length, len(cont)) + 1  # at least one context token
        ids = (head + cont)[-keep:][:-1]
        start = len(ids) + 1 - len(cont)  # where cont[0] would sit
        targets = [(j, [(start - 1 + k, t) for k, t in enumerate(cont)])]
        items.append(_Item(i, ids, targets, len(head) + len(cont) > keep))
    return items


def wrap_special(tok: PreTrainedTokenizerBase, ids: list[int]) -> list[int]:
    """Add the tokenizer's special tokens around ``ids`` ([CLS] ... [SEP] for BERT, <s> ... </s> for RoBERTa)."""
    specials = tok("", add_special_tokens=True)["input_ids"]
    if len(specials) == 2:
        return [specials[0], *ids, specials[1]]
    if len(specials) == 1:
        return [*ids, specials[0]] if specials[0] in (tok.sep_token_id, tok.eos_token_id) else [specials[0], *ids]
    return list(ids)


def _masked_items(
    i: int, cloze: Cloze, tok: PreTrainedTokenizerBase, max_length: int, add_special_tokens: bool = True
) -> list[_Item]:
    """Mask filling; masked LMs always get their [CLS]/[SEP]-style special tokens."""
    sep = _space(cloze.prefix)
    n_special = len(tok("", add_special_tokens=True)["input_ids"])
    cands = [_encode(tok, sep + c) for c in cloze.candidates]
    lengths = sorted({len(c) for c in cands})
    items = []
    for n in lengths:
        pre = _encode(tok, cloze.prefix.rstrip() if sep else cloze.prefix)
        post = _encode(tok, cloze.suffix)
        budget = max_length - n - len(post) - n_special
        cut = len(pre) > max(budget, 0)
        pre = pre[-budget:] if budget > 0 else []
        ids = wrap_special(tok, pre + [tok.mask_token_id] * n + post)
        first = ids.index(tok.mask_token_id)
        targets = [(j, [(first + k, t) for k, t in enumerate(c)]) for j, c in enumerate(cands) if len(c) == n]
        items.append(_Item(i, ids, targets, cut))
    return items


def build_items(
    clozes: list[Cloze],
    tokenizer: PreTrainedTokenizerBase,
    family: str,
    max_length: int,
    add_special_tokens: bool = True,
) -> list[_Item]:
    build = _causal_items if family == "causal" else _masked_items
    return [item for i, c in enumerate(clozes) for item in build(i, c, tokenizer, max_length, add_special_tokens)]


def cloze_lengths(clozes: list[Cloze], tokenizer: PreTrainedTokenizerBase, family: str, max_length: int) -> list[int]:
    """The tokens each cloze costs a scoring forward pass (all its items: one per candidate or candidate length
    unless its candidates are single tokens)."""
    lengths = [0] * len(clozes)
    for item in build_items(clozes, tokenizer, family, max_length):
        lengths[item.example] += len(item.input_ids)
    return lengths


def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, setting: int | None) -> int:
    """``evaluate.max_length``, or (null) the model's own context length, as lm-eval sizes its window: the
    config's n_positions / max_position_embeddings / n_ctx, else the tokenizer's model_max_length, else 2048."""
    if setting is not None:
        return setting
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, name, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < 1e29 else 2048


def _logits_at(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor):
    """A function (rows, positions) -> logits at those (row, position) pairs, [pairs, vocabulary]. Decoder LMs
    apply their LM head once, to those positions only."""
    body, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if body is not None and head is not None:
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        return lambda rows, positions: head(hidden[rows, positions])
    logits = model(input_ids=ids, attention_mask=mask).logits
    return lambda rows, positions: logits[rows, positions]


def pad_batch(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask of token-id rows (on the CPU)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def forward_items(
    model: PreTrainedModel, items: list[_Item], pad: int, runtime: Runtime | None = None
) -> list[tuple[int, int, torch.Tensor]]:
    """(example, candidate, summed log-probability) for every target of a batch of items; keeps the graph.
    Every scored position of the batch goes through the head and the log-softmax at once."""
    ids, mask = (runtime or Runtime()).to(pad_batch([it.input_ids for it in items], pad))
    positions = [sorted({p for _, pairs in it.targets for p, _ in pairs}) for it in items]
    rows = [r for r, ps in enumerate(positions) for _ in ps]
    flat = torch.tensor([p for ps in positions for p in ps], device=ids.device)
    logp = torch.log_softmax(_logits_at(model, ids, mask)(torch.tensor(rows, device=ids.device), flat).float(), -1)
    at, tokens, segment, keys = [], [], [], []  # one entry per target token; one segment per (item, candidate)
    offset = 0
    for it, ps in zip(items, positions, strict=True):
        row = {p: offset + k for k, p in enumerate(ps)}
        for j, pairs in it.targets:
            at += [row[p] for p, _ in pairs]
            tokens += [t for _, t in pairs]
            segment += [len(keys)] * len(pairs)
            keys.append((it.example, j))
        offset += len(ps)
    picked = logp[torch.tensor(at, device=logp.device), torch.tensor(tokens, device=logp.device)]
    sums = torch.zeros(len(keys), device=logp.device).index_add(0, torch.tensor(segment, device=logp.device), picked)
    return [(example, j, sums[k]) for k, (example, j) in enumerate(keys)]


def candidate_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    family: str,
    clozes: list[Cloze],
    max_length: int,
    runtime: Runtime | None = None,
) -> tuple[list[torch.Tensor], int]:
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
    max_length: int | None = 256,
    progress: bool = True,
    add_special_tokens: bool = True,
    truncated: list[int] | None = None,
    runtime: Runtime | None = None,
) -> list[list[float]]:
    """Summed log-probability of every candidate of every cloze (one list per cloze). ``max_length`` None:
    the model's context length; ``truncated``, when given, receives the clozes whose context was cut."""
    max_length = context_length(model, tokenizer, max_length)
    items = build_items(clozes, tokenizer, family, max_length, add_special_tokens)
    if truncated is not None:
        truncated.extend(sorted({it.example for it in items if it.truncated}))
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
