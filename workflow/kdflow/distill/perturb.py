"""LRC-BERT's gradient perturbation (Fu et al. 2021; GLMKD ``LRC_BERT.get_student_hook_op`` with
``--lrc_bert_gard_perturb --ignore_first_backward_gard --forward_repeat_num=1``): a step runs twice. The clean
pass computes the step's whole loss (every active loss, weighted) and its gradient with respect to the student's
embedding output; the perturbed pass adds ``epsilon * g / ||g||`` (each token's gradient vector normalised to
unit L2 norm, ``F.normalize(g, p=2, dim=-1)``; GLMKD's epsilon is 1) to the embedding output and computes the
whole loss again. Only the perturbed pass's loss trains (GLMKD backpropagates the clean pass for the gradient,
then zeroes the parameters' gradients before the step); the perturbation is a constant. A gradient with an
infinite or NaN entry leaves that forward unperturbed (GLMKD's ``DynamicLossScaler._has_inf_or_nan`` test).

The embedding output is the input of the embedding dropout where the model has one (``embeddings.dropout``:
BERT, RoBERTa, DistilBERT; GLMKD hooks GLM's word + position embeddings before its embedding dropout), else the
input of the first transformer layer (LLaMA-style decoders have no embedding dropout). Every student forward of
the step is perturbed by the gradient of its own embedding output, the i-th forward of the perturbed pass by
that of the i-th forward of the clean pass. As in GLMKD's repeated forward step, everything of the step runs
twice (a multi-teacher method, CoDIR's memory-bank update); each micro-batch of a gradient accumulation is
perturbed by its own gradient (GLMKD asserts no accumulation); the gradient is taken of the unscaled loss (GLMKD's
fp16 loss scale cancels in the normalisation; under fp16 autocast a token whose gradient underflows to zero
stays unperturbed)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..features import transformer_layers

StepResult = tuple[torch.Tensor, dict[str, float], int]


def step_perturbation(losses: Sequence[Any]) -> float:
    """The perturbation norm the active ``losses`` ask of the step (0: none)."""
    asked = {loss.embedding_perturbation() for loss in losses} - {0.0}
    if len(asked) > 1:
        raise ConfigError(f"losses ask for different gradient perturbations of one step: {sorted(asked)}")
    return asked.pop() if asked else 0.0


def embedding_site(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose input is the student's embedding output: the embedding dropout, else the first layer."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "embeddings" and isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
            return module.dropout
    return transformer_layers(model)[0]


def _first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _replace_first(
    args: tuple[Any, ...], kwargs: dict[str, Any], value: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return ((value, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": value})


@contextmanager
def recorded_embeddings(model: torch.nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """Inside the block, each forward of ``model`` appends its embedding output (None where it has no graph)."""
    recorded: list[torch.Tensor | None] = []

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = _first(args, kwargs)
        recorded.append(x if x.requires_grad else None)

    handle = embedding_site(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield recorded
    finally:
        handle.remove()


def perturbations(
    total: torch.Tensor, recorded: list[torch.Tensor | None], epsilon: float
) -> list[torch.Tensor | None]:
    """``epsilon`` times each recorded embedding output's gradient of ``total``, normalised per token (None
    where there is no gradient or it is not finite). Frees the clean pass's graph."""
    inputs = [x for x in recorded if x is not None]
    grads = iter(torch.autograd.grad(total, inputs, allow_unused=True) if inputs else ())
    out: list[torch.Tensor | None] = []
    for x in recorded:
        g = next(grads) if x is not None else None
        usable = g is not None and bool(torch.isfinite(g).all())
        out.append(epsilon * F.normalize(g.detach().float(), p=2, dim=-1) if usable else None)
    return out


@contextmanager
def perturbed_embeddings(model: torch.nn.Module, deltas: list[torch.Tensor | None]) -> Iterator[None]:
    """Inside the block, the i-th forward of ``model`` has ``deltas[i]`` added to its embedding output."""
    calls = itertools.count()

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        i, x = next(calls), _first(args, kwargs)
        if i >= len(deltas) or (deltas[i] is not None and deltas[i].shape != x.shape):
            raise RuntimeError("the perturbed pass ran the student differently from the clean pass")
        delta = deltas[i]
        return None if delta is None else _replace_first(args, kwargs, x + delta.to(x.dtype))

    handle = embedding_site(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def perturbed_step(once: Callable[[], StepResult], student: torch.nn.Module, epsilon: float) -> StepResult:
    """``once()`` (the step's loss, report and tokens) on the clean inputs for the gradient, then on the
    perturbed embeddings: the second pass's loss and report, the tokens of both."""
    with recorded_embeddings(student) as recorded:
        clean, _, clean_tokens = once()
    deltas = perturbations(clean, recorded, epsilon)
    with perturbed_embeddings(student, deltas):
        total, report, tokens = once()
    return total, report, clean_tokens + tokens
