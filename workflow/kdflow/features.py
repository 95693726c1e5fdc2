"""Intermediate representations for representation losses: per-layer hidden states, attention maps
(probabilities before dropout and pre-softmax scores) and query/key/value projections of one forward pass,
plus pooling and layer mapping.

Attention maps come from ``MAPS_ATTENTION``, an eager attention implementation registered with transformers
on first use: the library's own eager attention returns the probabilities *after* dropout in train mode
(rows no longer sum to 1), while TinyBERT and MiniLM compare the maps before dropout; TinyBERT also needs
the scores before the softmax. The implementation computes softmax(q k^T * scale + mask) like eager attention
(grouped-query keys/values repeated per query head), applies dropout only to what multiplies the values, returns the
undropped probabilities as the layer's attention weights and hands the masked scores to a list passed
in the forward call."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError

QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))
DECODER_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi",
        "phi3",
        "gpt2",
        "gpt_neox",
        "gptj",
        "opt",
        "bloom",
        "falcon",
        "olmo",
        "olmo2",
        "granite",
        "smollm3",
    }
)
MAPS_ATTENTION = "kdflow_maps"
SCORES_KWARG = "kdflow_scores"


def maps_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention [b, heads, l, d] returning (output [b, l, heads, d], probabilities before dropout);
    appends the scores + mask [b, heads, q, k] to ``kwargs[SCORES_KWARG]`` when that list is given."""
    for feature in ("sinks", "softcap"):  # computed inside other models' eager attention: not reproduced here
        if kwargs.get(feature) is not None:
            raise ConfigError(f"{type(module).__name__}: attention maps with '{feature}' are not supported")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    recorder = kwargs.get(SCORES_KWARG)
    if recorder is not None:
        recorder.append(scores)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    dropped = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(dropped, value).transpose(1, 2).contiguous(), probs


def _register_maps_attention() -> None:
    """Make ``MAPS_ATTENTION`` known to transformers (idempotent; imported here, not at start-up: config
    validation imports this module and should not pay for transformers)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(MAPS_ATTENTION, maps_attention)
    AttentionMaskInterface.register(MAPS_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


@dataclass
class Features:
    """What one forward pass exposes. ``hidden[0]`` is the embedding output, ``hidden[i]`` layer i's output."""

    mask: torch.Tensor  # [batch, length], 1 at real tokens
    output: Any = None  # the model's own output (logits, ...)
    hidden: tuple[torch.Tensor, ...] = ()
    attentions: tuple[torch.Tensor, ...] = ()  # per layer [batch, heads, length, length], before dropout
    scores: tuple[torch.Tensor, ...] = ()  # per layer: q k^T * scale + mask, before the softmax
    qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per layer [b, l, w]


LAYER_PATHS = ("model.layers", "bert.encoder.layer", "roberta.encoder.layer", "encoder.layer", "layers")


def layer_owner(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The module holding the transformer blocks (LLaMA-, BERT- or RoBERTa-style, with or without a task
    head) and the attribute name of their ModuleList."""
    for path in LAYER_PATHS:
        *parents, attr = path.split(".")
        owner: Any = model
        for part in parents:
            owner = getattr(owner, part, None)
            if owner is None:
                break
        if owner is not None and isinstance(getattr(owner, attr, None), torch.nn.ModuleList):
            return owner, attr
    raise ConfigError(f"{type(model).__name__}: no known list of transformer layers")


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks."""
    owner, attr = layer_owner(model)
    return getattr(owner, attr)


def _projections(layer: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    modules = dict(layer.named_modules())
    for names in QKV_NAMES:
        found = [next((m for n, m in modules.items() if n.split(".")[-1] == name), None) for name in names]
        if all(m is not None for m in found):
            return tuple(found)
    raise ConfigError(f"{type(layer).__name__}: no query/key/value projections found (looked for {QKV_NAMES})")


@contextmanager
def capture_qkv(model: torch.nn.Module):
    """Record every layer's query/key/value projection outputs during the forward passes inside the block."""
    records: list[dict[int, torch.Tensor]] = []
    handles = []
    for layer in transformer_layers(model):
        slot: dict[int, torch.Tensor] = {}
        records.append(slot)
        for role, proj in enumerate(_projections(layer)):
            handles.append(
                proj.register_forward_hook(lambda _m, _i, out, slot=slot, role=role: slot.update({role: out}))
            )
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def require_attentions(model: torch.nn.Module) -> None:
    """Switch ``model`` to ``MAPS_ATTENTION``, the eager implementation that returns attention maps before
    dropout and their pre-softmax scores."""
    current = getattr(model.config, "_attn_implementation", None)
    if current == MAPS_ATTENTION:
        return
    _register_maps_attention()
    try:
        model.set_attn_implementation(MAPS_ATTENTION)
    except Exception as exc:  # noqa: BLE001 - the library's reason is passed on
        raise ConfigError(
            f"{type(model).__name__} cannot return attentions: its attention implementation "
            f"'{current}' does not, and switching to eager attention failed ({exc})"
        ) from None


def release_attentions(model: torch.nn.Module) -> None:
    """Back to the library's default attention (before saving: the saved config must not name ours)."""
    if getattr(model.config, "_attn_implementation", None) == MAPS_ATTENTION:
        model.set_attn_implementation("sdpa" if model._supports_sdpa else "eager")


def forward_features(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    hidden: bool = False,
    attentions: bool = False,
    qkv: bool = False,
) -> Features:
    """One forward pass of ``model`` on ``inputs`` (input_ids, attention_mask, ...) keeping what is asked."""
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    scores: list[torch.Tensor] = []
    extra = {SCORES_KWARG: scores} if attentions and model.config._attn_implementation == MAPS_ATTENTION else {}
    if qkv:
        with capture_qkv(model) as records:
            out = model(**inputs, output_hidden_states=hidden, output_attentions=attentions, **extra)
        captured = [(r[0], r[1], r[2]) for r in records]
    else:
        out = model(**inputs, output_hidden_states=hidden, output_attentions=attentions, **extra)
        captured = []
    n_layers = len(transformer_layers(model))
    got_attentions = tuple(getattr(out, "attentions", None) or ())
    if attentions and (len(scores) != n_layers or len(got_attentions) != n_layers):
        raise ConfigError(
            f"{type(model).__name__} returned no attention maps under the "
            f"'{model.config._attn_implementation}' attention implementation; call "
            "features.require_attentions first"
        )
    return Features(
        mask=mask,
        output=out,
        hidden=tuple(getattr(out, "hidden_states", None) or ()),
        attentions=got_attentions,
        scores=tuple(scores),
        qkv=captured,
    )


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """[batch, length, width] -> [batch, width]: the first token, the mean over real tokens, or the last real one."""
    if how == "first":
        return hidden[:, 0]
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if how == "last":
        last = mask.long().cumsum(1).argmax(1)
        return hidden[torch.arange(hidden.shape[0]), last]
    raise ConfigError(f"pooling '{how}': expected first, mean or last")


def is_causal(config: Any) -> bool:
    """A decoder: its first token sees only itself."""
    if getattr(config, "is_decoder", False) or "CausalLM" in " ".join(config.architectures or []):
        return True
    return getattr(config, "model_type", "") in DECODER_TYPES  # e.g. a decoder with a classification head


def default_pooling(config: Any) -> str:
    """The first token ([CLS]) for encoders; for decoders, whose first token sees nothing else, the mean."""
    return "mean" if is_causal(config) else "first"


def map_layers(n_student: int, n_teacher: int, spec: str | list[int] = "uniform") -> list[int]:
    """Teacher layer (1-based, an index into ``hidden``) matched to each student layer 1..n_student."""
    if isinstance(spec, list):
        if len(spec) != n_student or any(not 1 <= i <= n_teacher for i in spec):
            raise ConfigError(f"layer map {spec}: expected {n_student} teacher layers in 1..{n_teacher}")
        return list(spec)
    if spec == "uniform":
        return [round(i * n_teacher / n_student) for i in range(1, n_student + 1)]
    if spec == "last":
        if n_student > n_teacher:
            raise ConfigError(f"layer map 'last': the student has more layers ({n_student}) than the teacher")
        return list(range(n_teacher - n_student + 1, n_teacher + 1))
    raise ConfigError(f"layer map '{spec}': expected uniform, last or an explicit list of teacher layers")
