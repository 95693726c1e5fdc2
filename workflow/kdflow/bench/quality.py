"""How well a cache keeps the teacher's distribution: the word-prediction KL between teacher and a real student,
computed from dense teacher logits, from kdflow's top-k cache (top-k entries + the log-normaliser, so the
tail mass is exact), and from a plain top-k cache renormalised over its own entries (DistillKit style) that
spends the normaliser's bytes on two more entries (equal bytes per token); plus KL(p || p_hat), the
distance of the cache's reconstructed distribution from the teacher's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


@torch.no_grad()
def kl_errors(
    teacher: Path, student: Path, corpus: Path, cache_dir: Path, k: int, temperatures: tuple[float, ...], blocks: int
) -> dict[str, Any]:
    from ..cache.kl import dense_kl, reconstruct, sparse_kl
    from ..cache.reader import CorpusCacheDataset
    from ..modeling import load_lm

    t_model, _, _ = load_lm(teacher)
    s_model, _, _ = load_lm(student)
    t_model.eval(), s_model.eval()
    data = CorpusCacheDataset(cache_dir, corpus)
    cached_temps = json.loads((Path(cache_dir) / "manifest.json").read_text())["settings"]["temperatures"]
    parts: dict[float, list[tuple[torch.Tensor, ...]]] = {t: [] for t in temperatures}
    for i in range(min(blocks, len(data))):
        item = data[i]
        ids = item["input_ids"][None]
        t_logits, s_logits = t_model(ids).logits[0].float(), s_model(ids).logits[0].float()
        for temp in temperatures:
            col = cached_temps.index(temp)
            dense = dense_kl(t_logits, s_logits, temp)
            cached = sparse_kl(s_logits, item["values"], item["ids"], item["log_norm"][:, col], temp)
            top = torch.log_softmax(t_logits, -1).topk(k + 2, -1)  # 8 normaliser bytes = 2 more bf16+uint16 entries
            p_plain = torch.softmax(top.values / temp, -1)
            log_q = torch.log_softmax(s_logits / temp, -1).gather(-1, top.indices)
            plain = (p_plain * (p_plain.log() - log_q)).sum(-1)
            p_hat = reconstruct(item["values"], item["ids"], item["log_norm"][:, col], temp, t_logits.shape[-1])
            log_p = torch.log_softmax(t_logits / temp, -1)
            recon = (log_p.exp() * (log_p - p_hat.clamp(min=1e-30).log())).sum(-1)
            parts[temp].append((dense, cached, plain, recon))
    out = {}
    for temp, rows in parts.items():
        dense, cached, plain, recon = (torch.cat([r[j] for r in rows]) for j in range(4))
        mean = float(dense.mean())
        out[f"T={temp:g}"] = {
            "dense_kl": mean,
            "kdflow_topk_kl": float(cached.mean()),
            "kdflow_topk_relative_error": float((dense - cached).abs().mean()) / mean,
            "plain_topk_kl": float(plain.mean()),
            "plain_topk_relative_error": float((dense - plain).abs().mean()) / mean,
            "reconstruction_kl": float(recon.mean()),
            "positions": int(dense.numel()),
        }
    return out


@torch.no_grad()
def hidden_kl_errors(
    teacher: Path, student: Path, corpus: Path, cache_dir: Path, temperatures: tuple[float, ...], blocks: int
) -> dict[str, Any]:
    """A ``hidden`` cache (any value dtype): the KL computed from the logits it gives back (its head inputs as
    stored, times the teacher's head) against the KL from the teacher's own logits, per temperature."""
    from ..cache.kl import dense_kl
    from ..cache.reader import CorpusCacheDataset
    from ..modeling import load_lm

    t_model, _, _ = load_lm(teacher)
    s_model, _, _ = load_lm(student)
    t_model.eval(), s_model.eval()
    data = CorpusCacheDataset(cache_dir, corpus)
    parts: dict[float, list[tuple[torch.Tensor, torch.Tensor]]] = {t: [] for t in temperatures}
    for i in range(min(blocks, len(data))):
        item = data[i]
        ids = item["input_ids"][None]
        t_logits, s_logits = t_model(ids).logits[0].float(), s_model(ids).logits[0].float()
        cached_logits = data.teacher_logits(item["hidden"])
        for temp in temperatures:
            parts[temp].append((dense_kl(t_logits, s_logits, temp), dense_kl(cached_logits, s_logits, temp)))
    out = {}
    for temp, rows in parts.items():
        dense, cached = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
        out[f"T={temp:g}"] = {
            "dense_kl": float(dense.mean()),
            "cached_kl": float(cached.mean()),
            "relative_error": float((dense - cached).abs().mean()) / float(dense.mean()),
            "positions": int(dense.numel()),
        }
    return out
