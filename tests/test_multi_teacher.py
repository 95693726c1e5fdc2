"""Fidelity of the multi-teacher combinations (kdflow.losses.multi_teacher): each method against an independent
implementation written here from GLMKD's code (or, for DGKD, from GLMKD's recorded command and the paper), on
random student/teacher logits, gold labels and per-teacher terms, values and gradients compared; then the
checks of ``stage2.multi_teacher`` (kdflow.recipes.specs_teachers) and the per-example values of the
prediction losses the combinations weight.

References (line numbers counted by hand in the stored copy; the quoted code locates them too):
- aitsc/GLMKD @48ceff9 distill/multi_teacher_model.py: lines 78-93 AvgTeacher.compute, 118-172 MT_BERT.compute,
  179-237 Uncertainty.compute, 240-266 RL_KD.__init__ and 290-368 RL_KD.compute.
- aitsc/GLMKD @262b169 distill/custom_loss.py: lines 33-59 loss_handling (keep_batch keeps dimension 0, else a
  mean over everything), info_entropy (-softmax(x) * log_softmax(x)).sum(-1).
- DGKD: aitsc/GLMKD @7f97461 distill/ft_logs/DGKD_340M+200M-110M.json ("--multi_teacher_model=avg --avgmt_sum_loss
  --avgmt_teacher_survival_p=0.75"); Son et al. 2021, "Densely Guided Knowledge Distillation using Multiple
  Teacher Assistants", sec. 3.3 (stochastic DGKD: each teacher's loss is dropped at a step with probability
  1 - p, the remaining ones summed). The code of the avgmt_* options is not in the stored sources: when every
  teacher dies, kdflow keeps one drawn uniformly (its own choice, pinned below).

In GLMKD's terms a teacher's "pre_loss" (kept per example) is kdflow's per-example terms, its "inter_loss" the
teacher's ``rest``; the student's hard loss s_out['loss'] is kdflow's separate ``ce`` loss (so MT-BERT and
RL-KD are compared with their *_wo_hard options), read only by RL-KD's reward.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import step_inputs

from kdflow.errors import ConfigError
from kdflow.losses import REGISTRY, Loss, build_losses
from kdflow.losses.multi_teacher import (
    COMBINERS,
    CombineInputs,
    TeacherTerms,
    build_multi_teacher,
    step_generator,
)
from kdflow.recipes.specs_teachers import MULTI_TEACHER, PER_EXAMPLE, resolve_multi_teacher


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _batch(seed: int, n: int, b: int = 5, c: int = 3):
    """Student logits (requiring grad), n teachers' logits, gold class ids, and a second student copy."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, c, generator=g) * 2
    teachers = [torch.randn(b, c, generator=g) * 2 for _ in range(n)]
    gold = torch.randint(c, (b,), generator=g)
    return student.clone().requires_grad_(True), teachers, gold, student.clone().requires_grad_(True)


def _glmkd_losses(student: torch.Tensor, teachers: list[torch.Tensor], seed: int = 0):
    """Per teacher: a per-example prediction loss (kdflow's kd at T = 2, [B]) and an inter loss (a scalar)."""
    kd = build_losses({"kd": {"temperature": 2.0}})[0]
    w = torch.rand(len(teachers), generator=torch.Generator().manual_seed(seed))
    pre = [kd.per_example(step_inputs(student_scores=list(student), teacher_scores=list(t))) for t in teachers]
    inter = [((student - t) ** 2).mean() * w_i for t, w_i in zip(teachers, w)]
    return pre, inter


def _inputs(step: int, student, teachers, gold, pre, inter) -> CombineInputs:
    c = student.shape[-1]
    return CombineInputs(
        terms=[TeacherTerms(p, r) for p, r in zip(pre, inter)],
        step=step,
        student_scores=list(student),
        teacher_scores=[list(t) for t in teachers],
        labels=list(F.one_hot(gold, c).float()),
    )


def _teacher_loss_batch(t_logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    # GLMKD t_out['loss_batch']: the teacher's cross-entropy with the gold label, per example
    return F.cross_entropy(t_logits, gold, reduction="none")


# ---- references written from GLMKD ------------------------------------------------------------------------


def ref_avg_teacher(pre_l, inter_l):
    # multi_teacher_model.py lines 85-93: pre_loss without keep_batch is the batch mean (custom_loss.py
    # loss_handling); "loss = pre_loss + inter_loss" per teacher; "return sum(loss_L) / len(loss_L)"
    losses = [p.mean() + i for p, i in zip(pre_l, inter_l)]
    return sum(losses) / len(losses)


def ref_mt_bert(pre_l, inter_l, t_logits_l, gold):
    # lines 156-157: "pre_loss *= 1 / (1 + t_out['loss_batch'])" on the keep_batch pre_loss; line 164
    # "loss = pre_loss.mean() + inter_loss"; lines 168-169 (mt_bert_wo_hard) "return sum(loss_L)"
    losses = []
    for p, i, t in zip(pre_l, inter_l, t_logits_l):
        weighted = p * (1 / (1 + _teacher_loss_batch(t, gold)))
        losses.append(weighted.mean() + i)
    return sum(losses)


def ref_uncertainty(pre_l, inter_l, s_logits, teacher_seq=None):
    # lines 192-197: norm_entropy_f = info_entropy(logits, keep_batch) / log(C) on s_out['logits'] (not detached);
    # lines 205-209: rate = arange(n) / (n - 1); rate = (1 - 2 H) rate + H; normalised over the teachers;
    # line 211: ones for one teacher; lines 213-218: t_seq; line 224 "rate[..., t_seq[i]] * pre_loss";
    # line 233 "loss = pre_loss.mean() + inter_loss"; line 237 the mean over teachers
    n = len(pre_l)
    entropy = (-F.softmax(s_logits, -1) * F.log_softmax(s_logits, -1)).sum(-1) / math.log(s_logits.size(-1))
    if n > 1:
        rate = torch.arange(0, n) / (n - 1.0)
        rate = (1 - 2 * entropy).unsqueeze(-1) * rate + entropy.unsqueeze(-1)
        rate = rate / rate.sum(-1).unsqueeze(-1)
    else:
        rate = entropy.new_ones(*entropy.shape, n)
    seq = teacher_seq if teacher_seq is not None else list(range(n))
    losses = [(rate[..., seq[i]] * p).mean() + inter for i, (p, inter) in enumerate(zip(pre_l, inter_l))]
    return sum(losses) / len(losses)


class RefRLKD:
    """GLMKD RL_KD with rl_kd_semantic_model None, rl_kd_only_avg false, rl_kd_reward 1, rl_kd_wo_hard, no mask."""

    def __init__(self, agent_semantic_mt_loss: torch.nn.Linear, agent_mt_soft: torch.nn.Linear) -> None:
        # lines 256 and 262: Linear(tn, tn) on the teachers' CE, Linear(class_dim * tn, tn) on their logits;
        # lines 264-266: the environment of the previous call
        self.agent_semantic_mt_loss, self.agent_mt_soft = agent_semantic_mt_loss, agent_mt_soft
        self.semantic_mt_loss_rep = self.mt_soft_rep = self.teacher_select = None

    def compute(self, pre_l, inter_l, t_logits_l, s_logits, gold, generator):
        # line 315: the teachers' loss_batch, detached, one column each; lines 319-320: their logits, detached
        semantic_mt_loss_rep = torch.cat([_teacher_loss_batch(t, gold).detach().unsqueeze(-1) for t in t_logits_l], -1)
        mt_soft_rep = torch.cat([t.detach() for t in t_logits_l], -1)
        loss_l = [p + i for p, i in zip(pre_l, inter_l)]  # line 330, pre_loss kept per example (line 325)
        # lines 340-345
        s = torch.sigmoid(self.agent_semantic_mt_loss(semantic_mt_loss_rep) + self.agent_mt_soft(mt_soft_rep))
        teacher_select = torch.rand(*s.shape, generator=generator) < s
        final_loss = (torch.stack(loss_l, -1) * teacher_select).mean()
        if self.teacher_select is not None:  # lines 347-361: the previous call re-scored by the current agent
            s = torch.sigmoid(
                self.agent_semantic_mt_loss(self.semantic_mt_loss_rep) + self.agent_mt_soft(self.mt_soft_rep)
            )
            pi = s * self.teacher_select + (1 - s) * (1 - self.teacher_select * 1)
            reward = -F.cross_entropy(s_logits, gold)  # reward[0] = - s_out['loss'] (batch mean)
            final_loss = final_loss + -pi.sum() * reward.detach().clone()
        # lines 362-364
        self.semantic_mt_loss_rep, self.mt_soft_rep = semantic_mt_loss_rep, mt_soft_rep
        self.teacher_select = teacher_select
        return final_loss


def ref_dgkd_keep(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    # Son et al. 2021 sec. 3.3: each teacher survives a step with probability p (a uniform draw below p); kdflow's
    # choice when none does: one teacher drawn uniformly from the same generator
    u = torch.rand(n, generator=generator)
    keep = u < p
    if keep.sum() == 0:
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randint(0, n, (1,), generator=generator).item()] = True
    return keep


def ref_dgkd(pre_l, inter_l, keep):
    # GLMKD avg model with --avgmt_sum_loss: the surviving teachers' losses (pre_loss mean + inter_loss) summed
    return sum(p.mean() + i for p, i, k in zip(pre_l, inter_l, keep) if k)


# ---- each method against its reference ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3])
def test_tmkd_equals_glmkd_avg_teacher(n):
    student, teachers, gold, student_r = _batch(1 + n, n)
    pre, inter = _glmkd_losses(student, teachers)
    pre_r, inter_r = _glmkd_losses(student_r, teachers)
    got = build_multi_teacher(None, n, 0)(_inputs(0, student, teachers, gold, pre, inter))
    want = ref_avg_teacher(pre_r, inter_r)
    close(got, want)
    got.backward(), want.backward()
    close(student.grad, student_r.grad)


@pytest.mark.parametrize("n", [2, 3])
def test_mt_bert_equals_glmkd(n):
    student, teachers, gold, student_r = _batch(10 + n, n, b=6, c=4)
    pre, inter = _glmkd_losses(student, teachers, 1)
    pre_r, inter_r = _glmkd_losses(student_r, teachers, 1)
    got = build_multi_teacher({"method": "mt_bert"}, n, 0)(_inputs(0, student, teachers, gold, pre, inter))
    want = ref_mt_bert(pre_r, inter_r, teachers, gold)
    close(got, want)
    got.backward(), want.backward()
    close(student.grad, student_r.grad)


@pytest.mark.parametrize(("n", "order"), [(2, None), (3, None), (3, [2, 0, 1]), (1, None)])
def test_uncertainty_equals_glmkd(n, order):
    student, teachers, gold, student_r = _batch(20 + n, n, b=4)
    pre, inter = _glmkd_losses(student, teachers, 2)
    pre_r, inter_r = _glmkd_losses(student_r, teachers, 2)
    combine = build_multi_teacher({"method": "uncertainty", "order": order}, n, 0)
    got = combine(_inputs(0, student, teachers, gold, pre, inter))
    want = ref_uncertainty(pre_r, inter_r, student_r, order)
    close(got, want)
    got.backward(), want.backward()
    close(student.grad, student_r.grad)


def test_uncertainty_weights_carry_gradient_to_the_student_like_glmkd():
    """GLMKD takes the entropy of s_out['logits'] undetached: with terms that do not depend on the student, the
    combination's gradient is the weights' alone, and is that of the reference (non-zero)."""
    student, teachers, gold, student_r = _batch(30, 3)
    pre, inter = _glmkd_losses(student.detach(), teachers, 3)
    got = build_multi_teacher({"method": "uncertainty"}, 3, 0)(_inputs(0, student, teachers, gold, pre, inter))
    want = ref_uncertainty(pre, inter, student_r)
    got.backward(), want.backward()
    assert student.grad.abs().sum() > 0
    close(student.grad, student_r.grad)


def test_rl_kd_equals_glmkd_over_consecutive_steps():
    n, c, seed = 3, 4, 11
    combine = build_multi_teacher({"method": "rl_kd"}, n, seed)
    combine.bind(c)
    ref = RefRLKD(copy.deepcopy(combine.agent_ce), copy.deepcopy(combine.agent_logits))
    ours = [combine.agent_ce.weight, combine.agent_ce.bias, combine.agent_logits.weight, combine.agent_logits.bias]
    theirs = [ref.agent_semantic_mt_loss.weight, ref.agent_semantic_mt_loss.bias]
    theirs += [ref.agent_mt_soft.weight, ref.agent_mt_soft.bias]
    mixed = 0
    for step in range(4):
        student, teachers, gold, student_r = _batch(40 + step, n, b=6, c=c)
        pre, inter = _glmkd_losses(student, teachers, step)
        pre_r, inter_r = _glmkd_losses(student_r, teachers, step)
        got = combine(_inputs(step, student, teachers, gold, pre, inter))
        want = ref.compute(pre_r, inter_r, teachers, student_r, gold, step_generator(seed, step))
        close(got, want)
        assert torch.equal(combine.previous_select, ref.teacher_select)
        mixed += bool(0 < int(ref.teacher_select.sum()) < ref.teacher_select.numel())
        got.backward(), want.backward()
        close(student.grad, student_r.grad)
        for p, q in zip(ours, theirs):
            if step == 0:  # the agent is trained by the REINFORCE term only, from the second step on
                assert p.grad is None and q.grad is None
                continue
            assert p.grad.abs().sum() > 0
            close(p.grad, q.grad)
            with torch.no_grad():  # the same SGD step on both agents: the next step re-scores with it
                p -= 0.5 * p.grad
                q -= 0.5 * q.grad
            p.grad = q.grad = None
    assert mixed >= 2  # the draws selected some teachers and dropped others


def test_rl_kd_needs_bind():
    student, teachers, gold, _ = _batch(50, 2)
    pre, inter = _glmkd_losses(student, teachers)
    with pytest.raises(RuntimeError, match="bind"):
        build_multi_teacher({"method": "rl_kd"}, 2, 0)(_inputs(0, student, teachers, gold, pre, inter))


@pytest.mark.parametrize("n", [2, 3])
def test_dgkd_equals_the_sum_over_surviving_teachers(n):
    seed = 5
    combine = build_multi_teacher({"method": "dgkd"}, n, seed)
    patterns = set()
    for step in range(8):
        student, teachers, gold, student_r = _batch(60 + step, n)
        pre, inter = _glmkd_losses(student, teachers, step)
        pre_r, inter_r = _glmkd_losses(student_r, teachers, step)
        keep = ref_dgkd_keep(n, 0.75, step_generator(seed, step))
        patterns.add(tuple(keep.tolist()))
        got = combine(_inputs(step, student, teachers, gold, pre, inter))
        want = ref_dgkd(pre_r, inter_r, keep)
        close(got, want)
        got.backward(), want.backward()
        close(student.grad, student_r.grad)
    assert len(patterns) > 1


def test_dgkd_survival_one_is_the_plain_sum_and_draws_are_reproducible():
    student, teachers, gold, _ = _batch(70, 3)
    pre, inter = _glmkd_losses(student, teachers)
    plain = sum(p.mean() + i for p, i in zip(pre, inter))
    every = build_multi_teacher({"method": "dgkd", "survival": 1.0}, 3, 0)
    for step in range(5):
        close(every(_inputs(step, student, teachers, gold, pre, inter)), plain)
    a, b = (build_multi_teacher({"method": "dgkd", "survival": 0.5}, 3, 9) for _ in range(2))
    for step in range(5):
        close(
            a(_inputs(step, student, teachers, gold, pre, inter)), b(_inputs(step, student, teachers, gold, pre, inter))
        )
    draws = [torch.rand(4, generator=step_generator(s, t)) for s, t in ((0, 3), (0, 3), (0, 4), (1, 3))]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert not torch.equal(draws[0], draws[3])


def test_dgkd_keeps_exactly_one_teacher_when_all_die():
    student, teachers, gold, _ = _batch(80, 3)
    pre, inter = _glmkd_losses(student, teachers)
    each = [p.mean() + i for p, i in zip(pre, inter)]
    combine = build_multi_teacher({"method": "dgkd", "survival": 1e-4}, 3, 2)
    chosen = set()
    for step in range(12):
        assert not (torch.rand(3, generator=step_generator(2, step)) < 1e-4).any()  # every teacher died
        keep = ref_dgkd_keep(3, 1e-4, step_generator(2, step))
        assert int(keep.sum()) == 1
        i = int(keep.nonzero())
        chosen.add(i)
        close(combine(_inputs(step, student, teachers, gold, pre, inter)), each[i])
    assert len(chosen) > 1


def test_missing_per_example_terms_count_as_zeros():
    student, teachers, gold, _ = _batch(90, 2)
    pre, inter = _glmkd_losses(student, teachers)
    for spec in (None, {"method": "mt_bert"}, {"method": "uncertainty"}, {"method": "dgkd", "survival": 1.0}):
        zeros = build_multi_teacher(spec, 2, 0)(_inputs(0, student, teachers, gold, [pre[0], pre[1] * 0], inter))
        missing = build_multi_teacher(spec, 2, 0)(_inputs(0, student, teachers, gold, [pre[0], None], inter))
        close(missing, zeros)
    with pytest.raises(ValueError, match="teachers' terms"):
        build_multi_teacher(None, 3, 0)(_inputs(0, student, teachers, gold, pre, inter))


# ---- settings ----------------------------------------------------------------------------------------------


def test_methods_declare_what_they_read():
    declared = {name: (set(cls.needs), cls.per_example, cls.uses_labels) for name, cls in MULTI_TEACHER.items()}
    assert declared == {
        "tmkd": (set(), False, False),
        "mt_bert": ({"teacher_scores", "labels"}, True, True),
        "uncertainty": ({"student_scores"}, True, False),
        "rl_kd": ({"student_scores", "teacher_scores", "labels"}, True, True),
        "dgkd": (set(), False, False),
    }
    assert set(COMBINERS) == set(MULTI_TEACHER)


def test_resolve_defaults_and_values():
    assert resolve_multi_teacher(None)[0].method == "tmkd"
    spec, problems = resolve_multi_teacher({"method": "dgkd"})
    assert not problems and spec.survival == 0.75
    spec, _ = resolve_multi_teacher({"method": "uncertainty", "order": [1, 0]})
    assert spec.order == (1, 0) and spec.values() == {"order": [1, 0]}


@pytest.mark.parametrize(
    ("spec", "key", "text"),
    [
        ({"method": "nope"}, "multi_teacher.method", "dgkd, mt_bert, rl_kd, tmkd, uncertainty"),
        ({}, "multi_teacher.method", "missing"),
        ("tmkd", "multi_teacher", "mapping"),
        ({"method": "dgkd", "p": 0.5}, "multi_teacher.p", "its settings: survival"),
        ({"method": "tmkd", "survival": 0.5}, "multi_teacher.survival", "its settings: none"),
        ({"method": "dgkd", "survival": 0}, "multi_teacher.survival", "(0, 1]"),
        ({"method": "dgkd", "survival": 1.5}, "multi_teacher.survival", "(0, 1]"),
        ({"method": "dgkd", "survival": "x"}, "multi_teacher.survival", "number"),
        ({"method": "dgkd", "survival": True}, "multi_teacher.survival", "number"),
        ({"method": "uncertainty", "order": [0, 0]}, "multi_teacher.order", "once"),
        ({"method": "uncertainty", "order": [0, 2]}, "multi_teacher.order", "once"),
        ({"method": "uncertainty", "order": [0, "a"]}, "multi_teacher.order", "integers"),
        ({"method": "uncertainty", "order": "x"}, "multi_teacher.order", "list"),
        ({"method": "uncertainty", "order": []}, "multi_teacher.order", "list"),
    ],
)
def test_bad_settings_are_reported_by_key(spec, key, text):
    settings, problems = resolve_multi_teacher(spec)
    assert settings is None and len(problems) == 1
    assert problems[0][0] == key and text in problems[0][1]
    with pytest.raises(ConfigError, match=key):
        build_multi_teacher(spec, 2, 0)


def test_order_length_is_checked_against_the_teachers():
    spec, _ = resolve_multi_teacher({"method": "uncertainty", "order": [1, 0]})
    assert [k for k, _ in spec.teacher_problems(3)] == ["multi_teacher.order"] and not spec.teacher_problems(2)
    with pytest.raises(ConfigError, match="multi_teacher.order"):
        build_multi_teacher({"method": "uncertainty", "order": [1, 0]}, 3, 0)


def test_settings_module_is_torch_free():
    code = "import sys, kdflow.recipes.specs_teachers; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- per-example values of the prediction losses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "settings"),
    [("candidate_kd", {}), ("candidate_kd", {"per_candidate": True, "temperature": 2.0}), ("kd", {})]
    + [("kd", {"temperature": 4.0}), ("ce", {}), ("mse_logits", {})],
)
def test_per_example_mean_is_forward(name, settings):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 3, generator=g) * 2, torch.randn(5, 3, generator=g) * 2
    labels = list(F.one_hot(torch.randint(3, (5,), generator=g), 3).float())
    loss = build_losses({name: settings})[0]
    inputs = step_inputs(student_scores=list(s), teacher_scores=list(t), labels=labels)
    rows = loss.per_example(inputs.restricted(loss.needs))
    assert loss.has_per_example and rows.shape == (5,)
    close(rows.mean(), loss(inputs.restricted(loss.needs)))


def test_other_losses_have_no_per_example_values():
    assert not Loss.has_per_example and not REGISTRY["word_kl"].has_per_example
    assert PER_EXAMPLE == {name for name, cls in REGISTRY.items() if cls.has_per_example}  # the torch-free list
    with pytest.raises(NotImplementedError):
        build_losses({"word_kl": {}})[0].per_example(step_inputs())
