"""A device audit for machines without a GPU: every torch operation is intercepted (a ``TorchFunctionMode``)
and one that mixes a tensor "on the target device" with a non-scalar tensor that never went there is
recorded, as CUDA would refuse it (``Expected all tensors to be on the same device``).

On a CPU machine both kinds of tensor are CPU tensors, so the audit keeps its own notion of the device:
tensors the runtime moves (``Runtime.to``), a placed model's parameters, buffers and gradients, tensors made
by factory functions given an explicit ``device=`` (``torch.arange(n, device=x.device)`` in model code), and
everything computed from any of these. ``.cpu()``, ``.numpy()``, ``.tolist()`` and ``.item()`` leave the device.
0-dim tensors are allowed to mix, as CUDA allows CPU scalars, and so are copies (``copy_``, item assignment),
which CUDA performs across devices."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

_LEAVE = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}
_FACTORIES = {
    torch.arange,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.tensor,
    torch.as_tensor,
    torch.randn,
    torch.rand,
    torch.randint,
    torch.eye,
    torch.linspace,
    torch.tril,
    torch.triu,
}
# Copies between devices, which CUDA allows (``dst.copy_(host)``, ``dst[i] = host``, load_state_dict).
_TRANSFERS = {torch.Tensor.copy_, torch.Tensor.__setitem__}
# Bookkeeping calls that read no tensor data.
_NEUTRAL = {
    torch.Tensor.dim,
    torch.Tensor.size,
    torch.Tensor.numel,
    torch.Tensor.data_ptr,
    torch.Tensor.is_floating_point,
    torch.Tensor.register_hook,
    torch.Tensor.requires_grad_,
    torch.Tensor.__len__,
}


class DeviceAudit(TorchFunctionMode):
    """``with DeviceAudit() as audit: ...`` then ``audit.violations``: (operation, shapes) of every mix."""

    def __init__(self) -> None:
        super().__init__()
        self._on = WeakIdKeyDictionary()
        self.violations: list[str] = []

    def mark(self, tensor: torch.Tensor) -> torch.Tensor:
        self._on[tensor] = True
        return tensor

    def mark_module(self, module: torch.nn.Module) -> None:
        """A placed model: its parameters and buffers are on the device, and so will be their gradients."""
        for p in module.parameters():
            self._on[p] = True
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._grad_hook)
        for b in module.buffers():
            self._on[b] = True

    def _grad_hook(self, param: torch.Tensor) -> None:
        if param.grad is not None:
            self._on[param.grad] = True

    def on_device(self, tensor: torch.Tensor) -> bool:
        return tensor in self._on

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _LEAVE:
            return out
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on = [t for t in tensors if t in self._on]
        neutral = func in _NEUTRAL or getattr(func, "__name__", "") in ("__get__", "__set__")  # .T, .shape, ...
        if on and not neutral and func not in _TRANSFERS:
            strays = [t for t in tensors if t not in self._on and t.dim() > 0]
            if strays:
                name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
                self.violations.append(
                    f"{name}: device {[tuple(t.shape) for t in on][:3]} with host "
                    f"{[tuple(t.shape) for t in strays][:3]}"
                )
        if (
            on
            or (func in _FACTORIES and kwargs.get("device") is not None)
            or (func in (torch.Tensor.to, torch.Tensor.cuda) and _names_device(args, kwargs))
        ):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._on[t] = True
        return out


def _names_device(args: tuple, kwargs: dict) -> bool:
    """``tensor.to(...)`` given a device (positionally or by keyword), not only a dtype."""
    if "device" in kwargs:
        return True
    return any(isinstance(a, (torch.device, str)) for a in args[1:])
