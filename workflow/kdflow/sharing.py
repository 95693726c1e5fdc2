"""ALBERT cross-layer parameter sharing (Lan et al. 2020) for students (`students.NAME.share_layers`): all N
transformer layers of the student use one set of parameters, as GLMKD's `--cross_layer_parameter_sharing`,
which builds one layer and runs it N times (aitsc/GLMKD mpu/transformer.py, GPT2ParallelTransformer).

Here each layer keeps its own module (its hooks, its ``layer_idx`` for the KV cache, its attention type), and
layers 1..N-1 hold layer 0's Parameter objects: ``model.parameters()`` yields them once, so the optimizer and
the parameter counts see one layer, and autograd sums a shared tensor's gradients over its N uses.

``save_pretrained`` refuses shared tensors, so a shared model is saved through :func:`save_model`: layer 0's
tensors once, and the config records ``kdflow_shared_layers`` (the checkpoint path of the layer list and N).
:func:`load_model` is how kdflow loads every model folder: for such a folder it hands the stored layer to
every layer's name and ties the layers again. A plain ``from_pretrained`` of such a folder initialises layers
1..N-1 at random (its load report lists them as missing): load it with :func:`load_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, GenerationConfig

from .errors import AssetError, ConfigError
from .features import layer_owner

MARKER = "kdflow_shared_layers"
LOAD_ARGUMENTS = ("dtype", "attn_implementation", "device_map")  # from_pretrained's own; the rest set the config


def layer_path(model: torch.nn.Module) -> str:
    """The state-dict path of ``model``'s list of transformer layers, e.g. ``bert.encoder.layer``."""
    owner, attr = layer_owner(model)
    prefix = next(name for name, module in model.named_modules() if module is owner)
    return f"{prefix}.{attr}" if prefix else attr


def shared_layers(model: torch.nn.Module) -> dict[str, Any] | None:
    """The model's sharing marker ({path, count}) or None (its layers are its own)."""
    return getattr(model.config, MARKER, None)


def share_layers(model: torch.nn.Module, check: bool = False) -> torch.nn.Module:
    """``model`` with every transformer layer holding layer 0's parameters (the others' own are dropped) and
    the marker in its config. With ``check``, a layer whose own parameters differ from layer 0's is refused
    (tying again what an engine handed back as equal copies must not change any value)."""
    owner, attr = layer_owner(model)
    layers = getattr(owner, attr)
    if len(layers) < 2:
        raise ConfigError(f"share_layers: the student has {len(layers)} transformer layer; sharing needs 2 or more")
    first = dict(layers[0].named_parameters())
    for index, layer in enumerate(layers[1:], start=1):
        own = dict(layer.named_parameters())
        if own.keys() != first.keys():
            raise ConfigError(f"share_layers: layer {index} has other parameters than layer 0; it cannot share them")
        for name, param in first.items():
            if own[name] is param:
                continue
            if own[name].shape != param.shape or (check and not torch.equal(own[name].detach(), param.detach())):
                raise RuntimeError(f"shared layers: layer {index}'s {name} differs from layer 0's; not tying it")
            module, _, leaf = name.rpartition(".")
            setattr(layer.get_submodule(module), leaf, param)
    setattr(model.config, MARKER, {"path": layer_path(model), "count": len(layers)})
    return model


def save_model(model: torch.nn.Module, folder: str | Path) -> None:
    """``model.save_pretrained(folder)``; a model with shared layers stores layer 0's tensors once (tied again
    first, after checking that untied copies are equal) with the marker in config.json."""
    if not shared_layers(model):
        model.save_pretrained(folder)
        return
    share_layers(model, check=True)
    marker = shared_layers(model)
    others = tuple(f"{marker['path']}.{i}." for i in range(1, marker["count"]))
    state = {key: value for key, value in model.state_dict().items() if not key.startswith(others)}
    model.save_pretrained(folder, state_dict=state)


def _stored_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors checkpoint (one file, or the shards of its index)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    if not (folder / "model.safetensors").exists():
        raise AssetError(f"{folder}: a model with shared layers is stored as safetensors, and there is none")
    return load_file(folder / "model.safetensors")


def expanded_state(folder: Path, marker: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The folder's checkpoint with the one stored layer also under the names of layers 1..N-1."""
    state = _stored_state(folder)
    path, count = marker["path"], int(marker["count"])
    first = {key[len(path) + 3 :]: value for key, value in state.items() if key.startswith(f"{path}.0.")}
    if not first or any(key.startswith(f"{path}.1.") for key in state):
        raise AssetError(f"{folder}: config.json marks {count} shared layers at '{path}'; the weights do not hold one")
    for index in range(1, count):
        state.update({f"{path}.{index}.{name}": value for name, value in first.items()})
    return state


def _model_class(cls: Any, config: Any) -> Any:
    """The concrete class an ``AutoModel*`` class builds for ``config`` (``cls`` itself when concrete)."""
    mapping = getattr(cls, "_model_mapping", None)
    if mapping is None:
        return cls
    try:
        return mapping[type(config)]
    except KeyError:
        raise AssetError(f"{cls.__name__} has no model class for a {type(config).__name__}") from None


def load_model(cls: Any, folder: str | Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder, local_files_only=True, **kwargs)``; a folder with shared layers gets its
    stored layer under every layer's name and comes back with the layers tied (``kwargs`` other than dtype,
    attention implementation and device map set config values, e.g. a head's num_labels)."""
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    marker = getattr(config, MARKER, None)
    if not marker:
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    load = {key: kwargs.pop(key) for key in LOAD_ARGUMENTS if key in kwargs}
    config = AutoConfig.from_pretrained(folder, local_files_only=True, **kwargs)
    if int(marker["count"]) != config.num_hidden_layers:
        raise AssetError(
            f"{folder}: config.json marks {marker['count']} shared layers, and the model has {config.num_hidden_layers}"
        )
    state = expanded_state(folder, marker)
    model = _model_class(cls, config).from_pretrained(None, config=config, state_dict=state, **load)
    if (folder / "generation_config.json").exists() and model.can_generate():
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    return share_layers(model, check=True)
