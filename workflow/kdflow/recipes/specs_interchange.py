"""Declaration of DIITO, distillation by interchange intervention (``kdflow.losses.interchange``; Wu et al. 2022,
"Causal Distillation for Language Models"). Defaults are GKD's recorded DIITO run (aitsc/GLMKD's command notes:
``--diito_alignment=full --diito_interchange_prop=0.3 --diito_interchange_way=consecutive
--diito_interchange_max_token=-1 --diito_alpha_causal_cos=0 --distill_temperature=2``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .specs import LossSpec
from .values import SettingError, at_least, choice, number, optional_count, positive

ALIGNMENTS = ("full", "middle", "late")
POSITIONS = ("consecutive", "random")


@dataclass(frozen=True)
class DIITO(LossSpec):
    """DIITO's causal (counterfactual) term, stage 2 of the encoder track (a classification student taught by an
    online classification teacher with the same tokenisation). GLMKD's other DIITO terms are kdflow's
    ``candidate_kd``/``kd`` (``--diito_alpha_ce``), ``ce`` (``--diito_alpha_mlm``) and ``hidden_cosine``
    (``--diito_alpha_cos``) in the same recipe; ``weight`` is ``--diito_alpha_causal_ce``.

    - ``alignment`` (``--diito_alignment``): where the states are swapped. ``full``: a student layer l drawn
      each step, and the outputs of the teacher layers of its block; ``middle``: hidden state n // 2 + 1 of
      each model (n layers); ``late``: the last two hidden states (layer n - 1's output and the last).
    - ``proportion`` (``--diito_interchange_prop``), in (0, 1]: each example swaps int(proportion x the
      shorter of its and its dual's lengths) positions.
    - ``positions`` (``--diito_interchange_way``): ``consecutive`` (one span in the example, one in its dual)
      or ``random`` (positions drawn among the real tokens of each). GLMKD's ``masked`` is not offered.
    - ``max_positions`` (``--diito_interchange_max_token``; null = -1, no cap): at most this many per example.
    - ``temperature`` (``--distill_temperature``) of the soft cross-entropy, > 0.
    - ``cosine`` (``--diito_alpha_causal_cos`` / ``--diito_alpha_causal_ce``), >= 0: the weight, relative to
      the cross-entropy, of the cosine distance between the counterfactual last hidden states (equal widths).
    """

    name: ClassVar[str] = "diito"
    needs: ClassVar[frozenset[str]] = frozenset({"interchange_scores"})
    stages: ClassVar[tuple[str, ...]] = ("stage2",)
    token_aligned: ClassVar[bool] = True
    alignment: str = "full"
    proportion: float = 0.3
    positions: str = "consecutive"
    max_positions: int | None = None
    temperature: float = 2.0
    cosine: float = 0.0

    def check(self) -> None:
        choice("alignment", self.alignment, ALIGNMENTS)
        choice("positions", self.positions, POSITIONS)
        proportion = number("proportion", self.proportion)
        if not 0.0 < proportion <= 1.0:
            raise SettingError("proportion", f"expected a value in (0, 1], got {proportion:g}")
        self.set(
            proportion=proportion,
            max_positions=optional_count("max_positions", self.max_positions),
            temperature=positive("temperature", self.temperature),
            cosine=at_least("cosine", self.cosine, 0.0),
        )
