"""Loading model folders and describing them (family, parameter counts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .errors import AssetError
from .runtime import Runtime
from .sharing import load_model

log = logging.getLogger(__name__)


def family_of_config(config: PretrainedConfig) -> str:
    """'causal' for decoder LMs, 'masked' for encoders (BERT-style)."""
    archs = " ".join(config.architectures or [])
    if "CausalLM" in archs or getattr(config, "is_decoder", False):
        return "causal"
    if "MaskedLM" in archs or "ForPreTraining" in archs:
        return "masked"
    return "masked" if config.model_type in {"bert", "roberta", "distilbert", "albert", "electra"} else "causal"


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total, input-embedding and output-head parameters (LM head or classification head; a tied head is
    counted once, as embedding)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb_module = model.get_input_embeddings()
    embedding = sum(p.numel() for p in emb_module.parameters())
    head_module = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name in ("classifier", "score"):  # sequence-classification heads
        if head_module is None and isinstance(getattr(model, name, None), torch.nn.Module):
            head_module = getattr(model, name)
    head = 0
    if head_module is not None:
        emb_params = {id(p) for p in emb_module.parameters()}
        head = sum(p.numel() for p in head_module.parameters() if id(p) not in emb_params)
    return {"total": total, "embedding": embedding, "head": head, "body": total - embedding - head}


def read_metadata(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "kdflow.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_lm(
    folder: str | Path, keep_architecture: bool = False, runtime: Runtime | None = None, teacher: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load a word-prediction model folder for scoring; returns (model, tokenizer, family), the model in eval
    mode on the runtime's device: in the teacher dtype when ``teacher`` (frozen), else in fp32.

    With ``keep_architecture``, a folder is loaded as what it is: a classification model with its head,
    an encoder without an LM head as the bare encoder (representation-only distillation)."""
    runtime = runtime or Runtime()
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise AssetError(f"{folder}: not a model folder (config.json is missing)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    family = read_metadata(folder).get("family") or family_of_config(config)
    cls = AutoModelForCausalLM if family == "causal" else AutoModelForMaskedLM
    archs = config.architectures or []
    has_lm_head = any("CausalLM" in a or "MaskedLM" in a or "ForPreTraining" in a for a in archs)
    if keep_architecture and any(a.endswith("ForSequenceClassification") for a in archs):
        cls = AutoModelForSequenceClassification
    elif keep_architecture and not has_lm_head and family == "masked":
        cls = AutoModel
    elif family == "masked" and not has_lm_head:
        log.warning("%s has no masked-LM head (%s): its head is randomly initialised", folder, archs)
    model = runtime.place(load_model(cls, folder, **runtime.load_kwargs(teacher)), teacher)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if (folder / "vocab_map.json").exists():  # a compressed-vocabulary student: text -> compressed ids
        from .vocab.model import CompressedTokenizer
        from .vocab.vmap import VocabMap

        tokenizer = CompressedTokenizer(tokenizer, VocabMap.load(folder / "vocab_map.json"))
    return model, tokenizer, family
