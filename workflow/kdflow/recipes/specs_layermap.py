"""Declarations of the layer-mapping and relation losses of the GKD method zoo (``kdflow.losses.layermap``):
ALP-KD, Universal-KD, RAIL-KD, CKD and MGSKD. Defaults are GLMKD's (aitsc/GLMKD arguments.py and the
recorded commands of distill/readme.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .specs import HIDDEN, LossSpec
from .values import POOLINGS, SettingError, choice, count, flag, layer_spec, number, optional_count


def non_negative(key: str, value: Any) -> float:
    """A number >= 0 (the weight of one term of a loss)."""
    value = number(key, value)
    if value < 0:
        raise SettingError(key, f"expected a number >= 0, got {value:g}")
    return value


@dataclass(frozen=True)
class ALPKD(LossSpec):
    name: ClassVar[str] = "alp_kd"
    needs: ClassVar[frozenset[str]] = HIDDEN
    pooling: str = "auto"  # the reference's [CLS]; decoders: the mean over real tokens

    def check(self) -> None:
        choice("pooling", self.pooling, POOLINGS)


@dataclass(frozen=True)
class UniversalKD(LossSpec):
    name: ClassVar[str] = "universal_kd"
    needs: ClassVar[frozenset[str]] = HIDDEN
    dim: int | None = None  # --universal_kd_size: width of the projected layers (default: the student's)
    pooling: str = "auto"  # --universal_kd_avg: mean; default [CLS] (decoders: the mean)
    final_only: bool = False  # --universal_kd_cg: only the last layers (CG instead of IL/CA)

    def check(self) -> None:
        choice("pooling", self.pooling, POOLINGS)
        flag("final_only", self.final_only)
        self.set(dim=optional_count("dim", self.dim))


@dataclass(frozen=True)
class RAILKD(LossSpec):
    name: ClassVar[str] = "rail_kd"
    needs: ClassVar[frozenset[str]] = HIDDEN
    dim: int = 128  # --rail_kd_u
    concatenated: bool = True  # --rail_kd_concatenated (the recorded command); false: layer-wise
    embeddings: bool = False  # --rail_kd_has_embed
    final: bool = False  # --rail_kd_has_final
    resample_every: str | int = "epoch"  # --rail_kd_epochs=1, or a number of steps (--rail_kd_iters)

    def check(self) -> None:
        for key in ("concatenated", "embeddings", "final"):
            flag(key, getattr(self, key))
        if self.resample_every != "epoch":
            self.set(resample_every=count("resample_every", self.resample_every))
        self.set(dim=count("dim", self.dim))


@dataclass(frozen=True)
class CKD(LossSpec):
    name: ClassVar[str] = "ckd"
    needs: ClassVar[frozenset[str]] = HIDDEN
    token_aligned: ClassVar[bool] = True
    layers: str | list[int] = "uniform"  # teacher layer of each student layer (the embeddings pair too)
    window: int = 21  # --ckd_window_size
    wrdist: float = 1.0  # --ckd_wrdist_w
    wrangle: float = 10.0  # --ckd_wrangle_w
    ltrdist: float = 1.0  # --ckd_ltrdist_w
    ltrangle: float = 10.0  # --ckd_ltrangle_w

    def check(self) -> None:
        layer_spec(self.layers)
        window = count("window", self.window)
        if window % 2 == 0:
            raise SettingError("window", f"expected an odd window (centred on the token), got {window}")
        self.set(
            window=window,
            **{k: non_negative(k, getattr(self, k)) for k in ("wrdist", "wrangle", "ltrdist", "ltrangle")},
        )


@dataclass(frozen=True)
class MGSKD(LossSpec):
    name: ClassVar[str] = "mgskd"
    needs: ClassVar[frozenset[str]] = HIDDEN
    token_aligned: ClassVar[bool] = True
    layers: str | list[int] = "uniform"
    relation_heads: int = 64  # --mgskd_multi_heads
    k1: int = 20  # --mgskd_triplet_k1
    k2: int = 20  # --mgskd_triplet_k2
    token_layers: int = 2  # --mgskd_sample_level_m: the first M representations (embeddings first)
    token: float = 1.0  # --mgskd_weight_token
    span: float = 1.0  # --mgskd_weight_span
    sample: float = 4.0  # --mgskd_weight_sample
    span_max_rate: float = 0.4  # --mgskd_span_max_rate: random spans, at most this fraction of the length

    def check(self) -> None:
        layer_spec(self.layers)
        rate = number("span_max_rate", self.span_max_rate)
        if not 0.0 < rate < 1.0:
            raise SettingError("span_max_rate", f"expected a value in (0, 1), got {rate:g}")
        self.set(
            span_max_rate=rate,
            token_layers=count("token_layers", self.token_layers, minimum=0),
            **{k: count(k, getattr(self, k)) for k in ("relation_heads", "k1", "k2")},
            **{k: non_negative(k, getattr(self, k)) for k in ("token", "span", "sample")},
        )
