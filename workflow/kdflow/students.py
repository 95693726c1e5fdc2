"""Rule `init_student`: a student built from config: a layer subset of the teacher (initialised from its
layers), optionally a narrower random width, optionally with all layers sharing the first one's parameters
(ALBERT, `share_layers`), and a full or compressed vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from .errors import ConfigError
from .features import layer_owner
from .fingerprint import tokenizer_fingerprint, weights_fingerprint
from .jsonio import write_json
from .modeling import count_parameters, load_lm
from .safeio import atomic_folder
from .sharing import share_layers
from .vocab.factorised import factorise_embeddings, merge_factorised
from .vocab.model import compress_model, write_model_folder
from .vocab.vmap import VocabMap


def select_layers(total: int, spec: dict[str, Any]) -> list[int]:
    """Teacher layer indices kept by the student: uniform, first, last, bottom (the first count-1 layers and the
    last: a contiguous block keeps the features a uniform pick destroys; README, "What this shows"), or a list."""
    strategy = spec.get("strategy", "uniform")
    if strategy == "explicit":
        chosen = list(spec["list"])
        if not chosen or any(not 0 <= i < total for i in chosen) or len(set(chosen)) != len(chosen):
            raise ConfigError(f"layers.list {chosen} must name distinct layers in 0..{total - 1}")
        return chosen
    count = spec["count"]
    if not 1 <= count <= total:
        raise ConfigError(f"layers.count {count} must be in 1..{total} (the teacher has {total} layers)")
    if strategy == "first":
        return list(range(count))
    if strategy == "last":
        return list(range(total - count, total))
    if strategy == "bottom":
        return [*range(count - 1), total - 1]
    if count == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def cut_layers(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    owner, attr = layer_owner(model)
    layers = getattr(owner, attr)
    setattr(owner, attr, torch.nn.ModuleList([layers[i] for i in keep]))
    for new_index, layer in enumerate(getattr(owner, attr)):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model


def _narrow(teacher_dir: Path, width: dict[str, Any], seed: int) -> torch.nn.Module:
    config = AutoConfig.from_pretrained(teacher_dir, local_files_only=True)
    for key, value in width.items():
        if not hasattr(config, key):
            raise ConfigError(f"student width: the teacher's config has no '{key}'")
        setattr(config, key, value)
    torch.manual_seed(seed)
    arch = " ".join(config.architectures or [])
    cls = AutoModelForCausalLM if "CausalLM" in arch else AutoModelForMaskedLM
    return cls.from_config(config)


def init_student(
    teacher_dir: str | Path, spec: dict[str, Any], vocab_map: str | Path | None, out: str | Path, seed: int
) -> dict[str, Any]:
    teacher_dir, out = Path(teacher_dir), Path(out)
    model, _, family = load_lm(teacher_dir, keep_architecture=True)  # an encoder without LM head stays one
    total = model.config.num_hidden_layers
    teacher_params = count_parameters(model)
    if spec.get("width"):
        model = _narrow(teacher_dir, {**spec["width"], "num_hidden_layers": spec["layers"]["count"]}, seed)
        keep = None
    else:
        keep = select_layers(total, spec["layers"])
        model = cut_layers(model, keep)
    if spec.get("share_layers"):  # ALBERT: every layer runs the first kept layer's parameters
        model = share_layers(model)
    vmap, embedding_dim, factorised = None, None, None
    if vocab_map:
        vmap = VocabMap.load(vocab_map, tokenizer_fingerprint(teacher_dir))
        model = compress_model(model, vmap)
        embedding_dim = vmap.meta.get("embedding_dim")
        if embedding_dim:  # ALBERT-style rows: saved as their (rank embedding_dim) product, trained factorised
            factorised = count_parameters(factorise_embeddings(model, int(embedding_dim)))
            model = merge_factorised(model)
    with atomic_folder(out) as tmp:
        write_model_folder(model, teacher_dir, vmap, tmp)
        meta = {
            "kdflow": "model",
            "role": "student",
            "family": family,
            "teacher": str(teacher_dir),
            "layers_from_teacher": keep,
            "share_layers": bool(spec.get("share_layers")),
            "width": spec.get("width"),
            "vocab_map": "vocab_map.json" if vmap is not None else None,
            "vocab_size": model.config.vocab_size,
            "embedding_dim": embedding_dim,
            "factorised_parameters": factorised,
            "parameters": count_parameters(model),
            "teacher_parameters": teacher_params,
            "weights_sha256": weights_fingerprint(tmp),
        }
        write_json(tmp / "kdflow.json", meta)
    return meta
