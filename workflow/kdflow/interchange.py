"""DIITO's interchange intervention (Wu et al. 2022; aitsc/GLMKD @2f42ff7 ``distill/distill_model.py`` class
``DIITO``: ``get_hook``, ``get_hook_op``, ``inter_loss``, ``prepare_interchange_mask``).

Each example's dual is the next example of the batch (the last's is the first). At the aligned hidden states,
the states of sampled positions of each example are replaced by its dual's states, from the model's own normal
forward pass, at the dual's sampled positions (the k-th replaced position receives the dual's k-th, both in
position order), and the model runs on: the student and the teacher each once more, with the same positions.

Hidden state j is ``hidden_states[j]``: the input of the first layer for j = 0, layer j's output for j >= 1
(GLMKD hooks ``layers[j].layernorm_output`` and, for the last, ``output``: the same vectors for post-LN encoders).

The random draws come from a ``torch.Generator`` seeded by (seed, step) (``interchange_generator``), in this
order: the student layer (``full`` alignment only; GLMKD ``random.choice(range(1, L + 1))``), then for each
example the start of its span and the start of its dual's span (``consecutive``; GLMKD ``random.randint(0,
length - count)``) or its positions and its dual's (``random``). Every micro-batch of a step draws alike."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .features import forward_features, transformer_layers
from .hybrid import layer_blocks

Edit = Callable[[int, torch.Tensor], torch.Tensor]  # (hidden index, state) -> the state the model runs on


@dataclass
class Counterfactual:
    """DIITO's counterfactual outputs of one batch, and what was swapped where."""

    student_logits: torch.Tensor  # [batch, classes]
    teacher_logits: torch.Tensor
    mask: torch.Tensor  # [batch, length], 1 at real tokens
    swapped: torch.Tensor  # [batch, length] bool: the positions of example i that were replaced
    dual_swapped: torch.Tensor  # [batch, length] bool: in row i, the positions of its dual (i + 1) they received
    student_layers: list[int]  # hidden indices intervened on
    teacher_layers: list[int]
    student_last: torch.Tensor | None = None  # [batch, length, width]: the last hidden states (cosine term)
    teacher_last: torch.Tensor | None = None


def interchange_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's draws: the same for every (seed, step), another for another step."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def aligned_layers(
    alignment: str, n_student: int, n_teacher: int, generator: torch.Generator
) -> tuple[list[int], list[int]]:
    """(student, teacher) hidden indices intervened on. ``full``: student layer l drawn in 1..n_student, and the
    teacher layers of its block (``hybrid.layer_blocks``; GLMKD's int(T / S) layers per block when S divides
    T); ``middle``: n // 2 + 1 of each (for n <= 2 the last, where GLMKD's hook names a layer GLM does not
    have); ``late``: n - 1 and n of each."""
    if alignment == "full":
        layer = int(torch.randint(1, n_student + 1, (1,), generator=generator))
        return [layer], [j + 1 for j in layer_blocks(n_student, n_teacher)[layer - 1]]
    if alignment == "middle":
        return [n_student // 2 + 1], [n_teacher // 2 + 1]
    return [n_student - 1, n_student], [n_teacher - 1, n_teacher]


def _draw(high: int, generator: torch.Generator) -> int:
    """An integer in 0..high (both ends included, as ``random.randint``)."""
    return int(torch.randint(0, high + 1, (1,), generator=generator))


def interchange_masks(
    lengths: list[int],
    width: int,
    proportion: float,
    positions: str,
    max_positions: int | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, width] bool masks: the positions replaced in each example, and in row i its dual's positions
    whose states they receive. Each example swaps int(min(its length, its dual's) * proportion) positions
    (capped by ``max_positions``): one span in each (``consecutive``) or positions drawn among the real
    tokens of each (``random``)."""
    n = len(lengths)
    swapped = torch.zeros(n, width, dtype=torch.bool)
    dual = torch.zeros_like(swapped)
    for i, own in enumerate(lengths):
        other = lengths[(i + 1) % n]
        count = int(min(own, other) * proportion)
        count = count if max_positions is None else min(count, max_positions)
        if positions == "consecutive":
            start, dual_start = _draw(own - count, generator), _draw(other - count, generator)
            swapped[i, start : start + count] = True
            dual[i, dual_start : dual_start + count] = True
        else:
            swapped[i, torch.randperm(own, generator=generator)[:count]] = True
            dual[i, torch.randperm(other, generator=generator)[:count]] = True
    return swapped, dual


def interchanged(states: torch.Tensor, source: torch.Tensor, swapped: torch.Tensor, dual: torch.Tensor) -> torch.Tensor:
    """``states`` [batch, length, width] with, in each example i, the positions of ``swapped[i]`` holding the
    dual's (example i + 1's) ``source`` states at the positions of ``dual[i]``, both in position order."""
    out = states.clone()
    out[swapped] = source.roll(-1, 0)[dual].to(out.dtype)
    return out


@contextmanager
def edited_states(model: torch.nn.Module, indices: Iterable[int], edit: Edit) -> Iterator[None]:
    """Inside the block, ``model``'s forward passes run on ``edit(j, state)`` for each hidden index j of
    ``indices``: for j = 0 the first layer's input, for j >= 1 layer j's output (before anything else sees it)."""
    layers, handles = transformer_layers(model), []
    for j in indices:
        if j == 0:
            hook = _input_hook(edit)
            handles.append(layers[0].register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
        else:
            handles.append(layers[j - 1].register_forward_hook(_output_hook(edit, j), prepend=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _output_hook(edit: Edit, j: int) -> Callable[..., Any]:
    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (edit(j, output[0]), *output[1:])
        return edit(j, output)

    return hook


def _input_hook(edit: Edit) -> Callable[..., Any]:
    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (edit(0, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(0, kwargs["hidden_states"])}

    return hook


def _run(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    layers: list[int],
    masks: tuple[torch.Tensor, torch.Tensor],
    last: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The normal pass (recording the aligned states), then the intervened pass: its logits and last states."""
    sources: dict[int, torch.Tensor] = {}

    def record(j: int, state: torch.Tensor) -> torch.Tensor:
        sources.setdefault(j, state)
        return state

    with edited_states(model, layers, record):
        model(**inputs)
    with edited_states(model, layers, lambda j, state: interchanged(state, sources[j], *masks)):
        feats = forward_features(model, inputs, hidden=last)
    return feats.output.logits.float(), feats.hidden[-1] if last else None


def counterfactual(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    teacher_inputs: dict[str, torch.Tensor],
    settings: Any,
    generator: torch.Generator,
) -> Counterfactual:
    """DIITO's counterfactual logits of the student (with gradients, also through the swapped-in states, as in
    GKD's run without activation checkpointing) and of the teacher (without), on token-aligned batches;
    ``settings``: the ``diito`` spec (alignment, proportion, positions, max_positions, cosine)."""
    mask = inputs["attention_mask"]
    n_student, n_teacher = len(transformer_layers(student)), len(transformer_layers(teacher))
    s_layers, t_layers = aligned_layers(settings.alignment, n_student, n_teacher, generator)
    lengths = mask.sum(-1).tolist()
    drawn = interchange_masks(
        lengths, mask.shape[1], settings.proportion, settings.positions, settings.max_positions, generator
    )
    masks = tuple(m.to(mask.device) for m in drawn)
    last = settings.cosine > 0
    s_logits, s_last = _run(student, inputs, s_layers, masks, last)
    with torch.no_grad():
        t_logits, t_last = _run(teacher, teacher_inputs, t_layers, masks, last)
    return Counterfactual(s_logits, t_logits, mask, *masks, s_layers, t_layers, s_last, t_last)
