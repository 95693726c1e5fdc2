"""`group_by_length`: batches of examples of similar length, as transformers' LengthGroupedSampler builds them,
through the deterministic batch schedule (kdflow.train.settings), wired into stage 2 and both fine-tunings, and
refused where it would change nothing (stage 1's corpus blocks)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import TINY_TRAIN

from kdflow.config import validate_config
from kdflow.distill import distill
from kdflow.errors import ConfigError
from kdflow.finetune import finetune_classifier, finetune_teacher
from kdflow.students import init_student
from kdflow.train.settings import TrainSettings, batch_indices


def _grouped_reference(order: np.ndarray, lengths: list[int], batch_size: int) -> list[int]:
    """transformers 5.23.0 trainer_pt_utils.get_length_grouped_indices (lines 496-516), on a given permutation
    instead of its torch.randperm: mega_batch_mult = min(n // (4 batch_size), 50) or 1; mega-batches of the
    permutation, each sorted by length, longest first; the overall longest element swapped to position 0."""
    mult = min(len(lengths) // (batch_size * 4), 50) or 1
    size = mult * batch_size
    mega = [
        sorted(order[i : i + size].tolist(), key=lambda i: lengths[i], reverse=True) for i in range(0, len(order), size)
    ]
    top = int(np.argmax([lengths[m[0]] for m in mega]))
    mega[0][0], mega[top][0] = mega[top][0], mega[0][0]
    return [i for m in mega for i in m]


def _epoch(settings: TrainSettings, n: int, lengths: tuple[int, ...] | None, epoch: int = 0) -> list[int]:
    steps = n // settings.batch_size
    first = epoch * steps
    return [i for s in range(first, first + steps) for i in batch_indices(n, s, 0, settings, lengths)]


@pytest.mark.parametrize(("n", "batch_size"), [(1000, 8), (203, 4), (12, 4)])
def test_an_epoch_is_transformers_length_grouped_order_of_the_seeded_permutation(n, batch_size):
    rng = np.random.default_rng(n)
    lengths = tuple(int(x) for x in rng.integers(3, 120, n))
    grouped = TrainSettings(steps=1, batch_size=batch_size, seed=5, group_by_length=True)
    plain = TrainSettings(steps=1, batch_size=batch_size, seed=5)
    whole = n - n % batch_size
    for epoch in (0, 1):
        order = np.random.default_rng([5, epoch]).permutation(n)
        # the schedule reads epochs back to back; an epoch's first `whole` positions start at step epoch*n/batch
        if n % batch_size == 0:
            assert _epoch(grouped, n, lengths, epoch) == _grouped_reference(order, list(lengths), batch_size)
            assert _epoch(plain, n, lengths, epoch) == order.tolist()  # off: the lengths are not read
    got = _epoch(grouped, n, lengths)[:whole]
    assert got == _grouped_reference(np.random.default_rng([5, 0]).permutation(n), list(lengths), batch_size)[:whole]


def test_grouping_cuts_the_padding_of_real_batches():
    """Padded tokens per batch of 8 (the longest x 8) over an epoch of 1,024 lengths drawn like the sentiment
    reviews': grouping must cut them by more than a quarter, and every example is still seen once."""
    rng = np.random.default_rng(0)
    lengths = tuple(int(x) for x in np.clip(rng.normal(31, 11, 1024), 8, 66))
    padded = {}
    for flag in (False, True):
        settings = TrainSettings(steps=1, batch_size=8, seed=1, group_by_length=flag)
        batches = [batch_indices(1024, s, 0, settings, lengths) for s in range(128)]
        assert sorted(i for b in batches for i in b) == list(range(1024))
        padded[flag] = np.mean([8 * max(lengths[i] for i in b) for b in batches])
    assert padded[True] < 0.75 * padded[False], padded


def _training(**extra):
    return {**TINY_TRAIN, "epochs": 1, "max_steps": 3, "max_examples": 12, "group_by_length": True, **extra}


def test_fine_tunings_and_stage2_train_with_grouped_batches(tmp_path, tiny_llama, tiny_bert, sentiment_task):
    """The three trainings that read a task accept it and train; the step count is the schedule's."""
    meta = finetune_teacher(tiny_llama, sentiment_task, tmp_path / "ft", tmp_path / "w1", _training(), None, seed=0)
    assert meta["steps"] == 3
    meta = finetune_classifier(tiny_bert, sentiment_task, tmp_path / "fc", tmp_path / "w2", _training(), None, seed=0)
    assert meta["steps"] == 3
    init_student(tiny_bert, {"layers": {"strategy": "last", "count": 1}}, None, tmp_path / "student", seed=0)
    data = {"cache": None, "task": sentiment_task, "teacher": tmp_path / "fc"}
    run = {"student": "s", "stage2": {"losses": {"kd": {}, "ce": {}}}}
    meta = distill("stage2", tmp_path / "student", tmp_path / "out", tmp_path / "w3", run, _training(), data, None, 0)
    assert meta["steps"] == 3


def test_stage1_refuses_grouping_by_length(repo):
    cfg = yaml.safe_load((repo / "tests" / "config" / "tiny.yaml").read_text())
    cfg["distill"]["stage1"]["group_by_length"] = True
    cfg["runs"]["glmd"]["stage1"]["training"] = {"group_by_length": True}
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    for key in ("'distill.stage1.group_by_length'", "'runs.glmd.stage1.training.group_by_length'"):
        assert key in str(err.value)
    cfg = yaml.safe_load((repo / "tests" / "config" / "tiny.yaml").read_text())
    cfg["distill"]["stage2"]["group_by_length"] = True
    cfg["teacher_finetune"]["group_by_length"] = True
    validate_config(cfg)


def test_a_training_given_no_lengths_refuses_to_group(tmp_path):
    """The loop's backstop behind the config check: grouping without the examples' lengths stops at once."""
    import torch

    from kdflow.train.health import TrainingError
    from kdflow.train.loop import train
    from kdflow.train.workdir import WorkDir

    def loss_fn(module, indices, step):
        return module(torch.ones(len(indices), 4)).sum(), {"loss": 0.0}, len(indices)

    settings = TrainSettings(steps=2, batch_size=2, seed=0, group_by_length=True)
    with WorkDir(tmp_path / "w", {}) as work, pytest.raises(TrainingError, match="group_by_length needs"):
        train(torch.nn.Linear(4, 1), loss_fn, 4, settings, work)
    with WorkDir(tmp_path / "w2", {}) as work:
        trained = train(torch.nn.Linear(4, 1), loss_fn, 4, settings, work, lengths=[3, 1, 2, 5])
    assert isinstance(trained, torch.nn.Linear)
