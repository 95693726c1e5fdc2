"""Fidelity of Continuation-KD (kdflow.losses.schedule.ContinuationKD) against an independent implementation of
the paper's formulas written here: the schedules phi and psi step by step, the loss and the student's gradients
at several progress points, with some examples inside the hinge's margin and some outside. A deliberate
difference is pinned by a test named ``..._documented_difference``.

References:
- Jafari, Kobyzev, Rezagholizadeh, Poupart, Ghodsi 2022, "Continuation KD: Improved Knowledge Distillation
  through the Lens of Continuation Optimization", Findings of EMNLP 2022 (arXiv:2212.05998v1), section 4:
  eq. 3 (L = psi(i) L_CE + (1 - psi(i)) L_CNT), eq. 4 (L_CNT = max{0, ||z_S - phi(T_i) z_T||^2 - m phi(T_i)},
  "a mean square loss between the student's logits and the annealed version of the teacher's logits"), eq. 5
  (phi(T_i) = 1 - (T_i - 1) / T_max, 1 <= T_i <= T_max), Algorithm 1 (lines 2-12: T = T_max, k = floor(n /
  T_max), "if i mod k = 0 then T = T - 1"), eq. 7 (CIFAR: psi(i) = i / 150 up to epoch 150 of 200) and eq. 8
  (GLUE: psi(i) = i / 40 up to epoch 20 of 30, then 1; T_max = 10).
- The authors' Annealing-KD code, whose phi Continuation-KD's eq. 5 repeats: huawei-noah/Efficient-NLP @aa29c67
  Annealing_KD/NLP_glue_tasks/annealing_kd_glue.py, ``train`` (the quoted code locates it): the counter "if i %
  int(args.num_train_epochs_phase_1 / args.max_temperature) == 0 and i > 0: temp += 1" from "temp = 1", the
  loss "F.mse_loss(S, T * (temp / args.max_temperature))" (a mean over the elements) and "F.cross_entropy(S,
  labels)".
- aitsc/GLMKD: distill/readme.md ("### Continuation_KD") and @7f97461 distill/ft_logs/16_1e-5_110M-66M/
  Continuation_KD.json record GKD's command (--continuation_kd_max_t=10 --continuation_kd_margin=1
  --continuation_kd_psi_sep=0.666 --continuation_kd_psi_denominator=1.333 --distill_ft_soft
  --distill_ft_soft_mse --distill_ft_hard: eq. 8's 20/30 and 40/30 of the training), but the stored copy of
  distill/distill_model.py (@2f42ff7) has no Continuation_KD class; no code of the paper was found. The
  formulas of the paper are the reference.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from conftest import step_inputs

from kdflow.losses import REGISTRY
from kdflow.recipes import check_recipe

CHECKED = {"continuation_kd": "test_continuation_kd_equals_the_paper_at_several_progress_points"}


def test_every_loss_here_is_checked():
    assert all(name in REGISTRY and callable(globals()[test]) for name, test in CHECKED.items())


# ---- the paper's schedules -------------------------------------------------------------------------------------


def ref_temperatures(n: int, max_t: int) -> list[int]:
    """T_i of each 0-based epoch: Annealing-KD's counter (temp = 1, + 1 every n / T_max epochs after the
    first), read as eq. 5's T_i = T_max + 1 - temp, so that phi(T_i) = temp / T_max."""
    temp, out = 1, []
    for i in range(n):
        if i % int(n / max_t) == 0 and i > 0:
            temp += 1
        out.append(max_t + 1 - temp)
    return out


def ref_phi(t_i: int, max_t: int) -> Fraction:  # eq. 5
    assert 1 <= t_i <= max_t
    return 1 - Fraction(t_i - 1, max_t)


def ref_psi_glue(i: int) -> Fraction:  # eq. 8 (30 epochs), i epochs done
    return Fraction(i, 40) if i <= 20 else Fraction(1)


def ref_psi_cifar(i: int) -> Fraction:  # eq. 7 (200 epochs)
    return Fraction(i, 150) if i <= 150 else Fraction(1)


def ref_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, phi: float, psi: float, m: float) -> torch.Tensor:
    """Eqs. 3-4 for each example (row) of [examples, classes] logits, averaged over the examples: the CE with
    the gold class, and the hinge on the mean square error with the annealed teacher."""
    ce = F.cross_entropy(s, y, reduction="none")
    mse = F.mse_loss(s, t * phi, reduction="none").mean(-1)
    hinge = torch.clamp(mse - m * phi, min=0.0)
    return (psi * ce + (1 - psi) * hinge).mean()


def _one_hot(y: torch.Tensor, classes: int) -> list[torch.Tensor]:
    return list(F.one_hot(y, classes).float())


def _batch(phi: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six examples of three classes; the student is the annealed teacher plus noise of growing size, so that
    the first examples lie inside the margin (m * phi with m = 1) and the last ones outside."""
    g = torch.Generator().manual_seed(seed)
    t = 4 * torch.randn(6, 3, generator=g)
    noise = torch.randn(6, 3, generator=g) * torch.tensor([0.1, 0.3, 0.5, 1.5, 2.5, 4.0])[:, None]
    return phi * t + noise * phi**0.5, t, torch.randint(0, 3, (6,), generator=g)


def test_continuation_kd_equals_the_paper_at_several_progress_points():
    """GLUE setting (eq. 8, T_max = 10, m = 1), one step per epoch of the paper's 30: phi and psi at every
    step, and the loss and its gradient at steps before, at and after psi's jump."""
    n, max_t, m = 30, 10, 1.0
    loss = REGISTRY["continuation_kd"](max_temperature=10.0, margin=m)
    temperatures = ref_temperatures(n, max_t)
    for i in range(n):
        phi, psi = loss.factors(i / n)
        assert phi == pytest.approx(float(ref_phi(temperatures[i], max_t)), abs=1e-12)
        assert psi == pytest.approx(float(ref_psi_glue(i)), abs=1e-12)
    for i in (0, 4, 11, 20, 21, 29):
        phi, psi = float(ref_phi(temperatures[i], max_t)), float(ref_psi_glue(i))
        s, t, y = _batch(phi, seed=i)
        mse = F.mse_loss(s, t * phi, reduction="none").mean(-1)
        assert (mse < m * phi).any() and (mse > m * phi).any()  # the hinge is active for some examples only
        s_ours = s.clone().requires_grad_(True)
        s_ref = s.clone().requires_grad_(True)
        got = loss(
            step_inputs(student_scores=list(s_ours), teacher_scores=list(t), labels=_one_hot(y, 3), progress=i / n)
        )
        want = ref_loss(s_ref, t, y, phi, psi, m)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
        (g_ours,) = torch.autograd.grad(got, s_ours)
        (g_ref,) = torch.autograd.grad(want, s_ref)
        assert torch.allclose(g_ours, g_ref, rtol=1e-5, atol=1e-7)


def test_continuation_kd_cifar_schedule_and_its_window():
    """Eq. 7 (psi = i / 150 up to epoch 150 of 200) with T_max = 20; and the same schedule in a window
    [0.2, 0.7) of the stage, where it runs over the window's steps."""
    n, max_t = 200, 20
    loss = REGISTRY["continuation_kd"](max_temperature=20.0, psi_sep=0.75, psi_denominator=0.75)
    windowed = REGISTRY["continuation_kd"](
        max_temperature=20.0, psi_sep=0.75, psi_denominator=0.75, start=0.2, stop=0.7
    )
    temperatures = ref_temperatures(n, max_t)
    for i in range(n):
        phi, psi = float(ref_phi(temperatures[i], max_t)), float(ref_psi_cifar(i))
        assert loss.factors(i / n) == pytest.approx((phi, psi), abs=1e-12)
        assert windowed.factors(0.2 + 0.5 * i / n) == pytest.approx((phi, psi), abs=1e-9)
    assert windowed.factors(0.1) == pytest.approx((1 / 20, 0.0)) and windowed.factors(0.9) == (1.0, 1.0)


def test_continuation_kd_settings_are_checked():
    problems = dict(check_recipe({"continuation_kd": {"psi_sep": 1.5}}, "stage2"))
    assert "continuation_kd.psi_sep" in problems
    problems = dict(check_recipe({"continuation_kd": {"psi_sep": 0.8, "psi_denominator": 0.5}}, "stage2"))
    assert "continuation_kd.psi_denominator" in problems
    assert "continuation_kd.margin" in dict(check_recipe({"continuation_kd": {"margin": -1}}, "stage2"))
    assert "continuation_kd.max_temperature" in dict(
        check_recipe({"continuation_kd": {"max_temperature": 0.5}}, "stage2")
    )
    assert "continuation_kd" in dict(check_recipe({"continuation_kd": {}}, "stage1"))
    assert check_recipe({"continuation_kd": {"psi_sep": 0.666, "psi_denominator": 1.333}}, "stage2") == []


def test_continuation_kd_temperature_steps_documented_difference():
    """Algorithm 1 taken literally (1-based i, "if i mod k = 0 then T = T - 1" before the step's loss) lowers
    T one step earlier than eq. 5's schedule kdflow follows (Annealing-KD's counter: T_max for the first
    n / T_max steps), and on the last step reaches T = 0, outside eq. 5's 1 <= T_i <= T_max (phi = 1.1)."""
    n, max_t = 30, 10
    loss = REGISTRY["continuation_kd"](max_temperature=10.0)
    t, k, algorithm = max_t, n // max_t, []
    for i in range(1, n + 1):
        if i % k == 0:
            t -= 1
        algorithm.append(1 - Fraction(t - 1, max_t))
    ours = [loss.factors(j / n)[0] for j in range(n)]
    assert ours[1:] == pytest.approx([float(a) for a in algorithm[:-1]])
    assert ours != pytest.approx([float(a) for a in algorithm])
    assert algorithm[-1] == Fraction(11, 10) and ours[-1] == 1.0


def test_continuation_kd_per_example_hinge_documented_difference():
    """kdflow's hinge is eq. 4's, per example (z_S(x), z_T(x)), then averaged; Algorithm 1 line 11 writes it
    on the mini-batch, max{0, ||S(X) - Phi T(X)||^2 - m Phi}. Both agree when every example is outside the
    margin (the hinge is then linear) and differ when some example is inside it."""
    loss = REGISTRY["continuation_kd"](margin=1.0)
    progress = 0.0  # psi = 0: the hinge only; phi = 1 / 10
    phi = loss.factors(progress)[0]

    def both(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.zeros(len(s), dtype=torch.long)
        ours = loss(
            step_inputs(student_scores=list(s), teacher_scores=list(t), labels=_one_hot(y, 3), progress=progress)
        )
        batch = torch.clamp(F.mse_loss(s, t * phi) - phi, min=0.0)
        return ours, batch

    g = torch.Generator().manual_seed(3)
    t = torch.randn(4, 3, generator=g)
    outside = phi * t + 2.0 * torch.randn(4, 3, generator=g)
    ours, batch = both(outside, t)
    assert (F.mse_loss(outside, t * phi, reduction="none").mean(-1) > phi).all()
    assert torch.allclose(ours, batch)
    mixed = outside.clone()
    mixed[0] = phi * t[0]  # example 0 equals the annealed teacher: inside the margin
    ours, batch = both(mixed, t)
    assert not torch.allclose(ours, batch)
