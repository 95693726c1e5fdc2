"""The method zoo: every registered loss and preset trains two steps on tiny models, on the track it is
meant for (and the representation losses on both tracks); numeric checks against independent formulas."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import TINY_CACHE, TINY_TRAIN, pack_text, step_inputs

from kdflow.cache.build import cache_corpus, cache_task
from kdflow.distill import distill
from kdflow.errors import ConfigError
from kdflow.features import forward_features, map_layers, require_attentions, transformer_layers
from kdflow.finetune import finetune_classifier
from kdflow.hybrid import layer_blocks, theseus_layers, tie_to_successors
from kdflow.losses import PRESETS, REGISTRY, LossContext, build_losses
from kdflow.losses.codir import CoDIR, momentum_update, nce_loss, nce_scores, sample_negatives
from kdflow.modeling import load_lm
from kdflow.students import init_student

TRAIN = {**TINY_TRAIN, "epochs": 1, "max_steps": 2}
CACHE = {**TINY_CACHE, "temperatures": [1.0, 2.0, 15.0]}
SMALL_CODIR = {"negatives": 4}

# (loss or preset, settings, track, stage): every registered name appears at least once (checked below)
CASES = [
    ("word_kl", {}, "decoder", "stage1"),
    ("lm", {}, "decoder", "stage1"),
    ("distilbert", {}, "decoder", "stage1"),
    ("codir", SMALL_CODIR, "decoder", "stage1"),
    ("codir", SMALL_CODIR, "encoder", "stage1"),
    ("candidate_kd", {}, "decoder", "stage2"),
    ("kd", {}, "decoder", "stage2"),
    ("kd", {}, "encoder", "stage2"),
    ("ce", {}, "encoder", "stage2"),
    ("mse_logits", {}, "encoder", "stage2"),
    ("pkd", {}, "encoder", "stage2"),
    ("hidden_cosine", {}, "encoder", "stage1"),
    ("tinybert_hidden", {"embeddings": True}, "encoder", "stage2"),
    ("tinybert_hidden", {}, "decoder", "stage2"),
    ("tinybert_attention", {}, "encoder", "stage2"),
    ("tinybert", {"switch": 0.5}, "encoder", "stage2"),
    ("minilm", {}, "encoder", "stage2"),
    ("minilmv2", {"relation_heads": 2}, "encoder", "stage2"),
    ("minilmv2", {"relation_heads": 2}, "decoder", "stage2"),
    ("minilm", {}, "decoder", "stage2"),
    ("lrc", {}, "encoder", "stage2"),
    ("codir", SMALL_CODIR, "encoder", "stage2"),
    ("codir", SMALL_CODIR, "decoder", "stage2"),
    ("theseus", {}, "encoder", "stage2"),
    ("theseus", {}, "decoder", "stage2"),
    ("annealing_kd", {}, "encoder", "stage2"),
    ("continuation_kd", {}, "encoder", "stage2"),
    ("sid", {}, "encoder", "stage2"),
    ("mobilebert", {}, "encoder", "stage1"),
    ("lrc_bert", {}, "encoder", "stage2"),
    ("lrc_bert", {"perturbation": 1.0}, "encoder", "stage2"),  # LRC-BERT's gradient perturbation: two passes a step
    ("lrc_bert", {"perturbation": 1.0}, "decoder", "stage2"),
    ("alp_kd", {}, "encoder", "stage2"),
    ("alp_kd", {}, "decoder", "stage2"),
    ("universal_kd", {"final_only": True}, "encoder", "stage2"),  # a 1-layer student has no inner layer
    ("rail_kd", {"dim": 16, "final": True}, "encoder", "stage2"),
    ("ckd", {}, "encoder", "stage2"),
    ("mgskd", {"relation_heads": 2}, "encoder", "stage2"),
    ("diito", {"cosine": 0.5}, "encoder", "stage2"),
    ("pd", {}, "decoder", "stage1"),
    ("pd", {}, "encoder", "stage2"),
]


@pytest.fixture(scope="module")
def tracks(tmp_path_factory, tiny_llama, tiny_bert, sentiment_task):
    """Decoder track (tiny LLaMA teacher, task + corpus caches) and encoder track (tiny BERT with a
    classification head fine-tuned for 2 steps), each with a 1-layer student cut from its teacher."""
    root = tmp_path_factory.mktemp("methods")
    pack_text(root, tiny_llama, name="corpus")
    pack_text(root, tiny_bert, name="bert_corpus")
    cache_corpus(tiny_llama, root / "corpus", None, root / "ccache", CACHE, seed=0)
    cache_task(tiny_llama, sentiment_task, None, root / "tcache", CACHE)
    finetune_classifier(
        tiny_bert, sentiment_task, root / "classifier", root / "wc", {**TRAIN, "max_steps": 2}, None, seed=0
    )
    for name, teacher in (("llama_student", tiny_llama), ("bert_student", tiny_bert)):
        init_student(teacher, {"layers": {"strategy": "last", "count": 1}}, None, root / name, seed=0)
    return {
        "decoder": {
            "student": root / "llama_student",
            "stage1": {"cache": root / "ccache", "corpus": root / "corpus", "teacher": tiny_llama},
            "stage2": {"cache": root / "tcache", "task": sentiment_task, "teacher": tiny_llama},
        },
        "encoder": {
            "student": root / "bert_student",
            "stage1": {"cache": None, "corpus": root / "bert_corpus", "teacher": tiny_bert},
            "stage2": {"cache": None, "task": sentiment_task, "teacher": root / "classifier"},
        },
    }


def test_every_registered_method_has_a_case():
    assert {name for name, *_ in CASES} == set(REGISTRY) | set(PRESETS)


@pytest.mark.parametrize(("name", "settings", "track", "stage"), CASES, ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_method_trains_two_steps(tracks, tmp_path, name, settings, track, stage):
    setup = tracks[track]
    run = {"student": "s", stage: {"losses": {name: settings}}}
    meta = distill(stage, setup["student"], tmp_path / "out", tmp_path / "work", run, TRAIN, setup[stage], None, seed=0)
    assert meta["steps"] == 2
    with open(tmp_path / "out" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    parts = {k for k in rows[0] if k not in ("step", "loss", "lr", "tokens_per_second")}
    assert name in parts or name in PRESETS
    if track == "encoder" and stage == "stage2":
        assert meta["head"] == "classification" and meta["task_type"] == "sst2"


def test_three_methods_in_one_run(tracks, tmp_path):
    setup = tracks["decoder"]
    run = {
        "student": "s",
        "stage2": {"losses": {"word_kl": {"temperature": 15.0}, "codir": SMALL_CODIR, "tinybert": {"switch": 1.0}}},
    }
    distill("stage2", setup["student"], tmp_path / "out", tmp_path / "work", run, TRAIN, setup["stage2"], None, seed=0)
    with open(tmp_path / "out" / "train_log.csv") as fh:
        row = next(csv.DictReader(fh))
    parts = {k: float(v) for k, v in row.items() if k not in ("step", "lr", "tokens_per_second")}
    assert {"word_kl", "codir", "tinybert_hidden", "tinybert_attention"} <= set(parts)
    expected = sum(parts[k] for k in parts if k != "loss")  # all weights 1
    assert parts["loss"] == pytest.approx(expected, rel=1e-4)


def test_same_seed_same_weights_for_new_heads_and_projections(tracks, tiny_bert, sentiment_task, tmp_path):
    """A fresh classification head, CoDIR's projections/memory banks and PKD's projections come from the seed:
    two runs give identical weights (a SLURM job must reproduce a local run), another seed does not."""
    from safetensors.torch import load_file

    def classifier(name, seed):
        finetune_classifier(
            tiny_bert,
            sentiment_task,
            tmp_path / name,
            tmp_path / f"w{name}",
            {**TRAIN, "max_steps": 1},
            None,
            seed=seed,
        )
        return load_file(tmp_path / name / "model.safetensors")

    first, again, other = classifier("a", 0), classifier("b", 0), classifier("c", 1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    setup = tracks["encoder"]
    run = {"student": "s", "stage2": {"losses": {"codir": SMALL_CODIR, "pkd": {}}}}
    for name in ("d", "e"):
        distill(
            "stage2",
            setup["student"],
            tmp_path / name,
            tmp_path / f"w{name}",
            run,
            TRAIN,
            setup["stage2"],
            None,
            seed=3,
        )
    d, e = load_file(tmp_path / "d" / "model.safetensors"), load_file(tmp_path / "e" / "model.safetensors")
    assert all(torch.equal(d[k], e[k]) for k in d)

    def losses(name):
        with open(tmp_path / name / "train_log.csv") as fh:
            return [{k: v for k, v in row.items() if k != "tokens_per_second"} for row in csv.DictReader(fh)]

    assert losses("d") == losses("e")


def test_tinybert_switches_from_intermediate_to_prediction_layer(tracks, tmp_path):
    setup = tracks["encoder"]
    run = {"student": "s", "stage2": {"losses": {"tinybert": {"switch": 0.5}}}}
    distill("stage2", setup["student"], tmp_path / "out", tmp_path / "work", run, TRAIN, setup["stage2"], None, seed=0)
    with open(tmp_path / "out" / "train_log.csv") as fh:
        first, second = list(csv.DictReader(fh))
    assert float(first["tinybert_hidden"]) > 0 and float(first["candidate_kd"]) == 0.0
    assert float(second["tinybert_hidden"]) == 0.0 and float(second["candidate_kd"]) > 0


def test_bad_combinations_are_refused():
    with pytest.raises(ConfigError, match="named twice"):
        build_losses({"candidate_kd": {}, "tinybert": {"switch": 0.5}})
    with pytest.raises(ConfigError, match="pre-training"):
        build_losses({"distilbert": {}}, "stage2")
    with pytest.raises(ConfigError, match="lm' works in stage1"):
        build_losses({"lm": {}}, "stage2")
    with pytest.raises(ConfigError, match="start"):
        build_losses({"kd": {"start": 0.8, "stop": 0.2}})


# ---- numeric checks ---------------------------------------------------------------------------------


def test_kd_matches_an_independent_formula():
    teacher = [torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 3.0, 1.0])]
    student = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-1.0, 2.0, 0.5])]
    t = 2.0
    expected = 0.0
    for tr, sr in zip(teacher, student):
        zt = sum(math.exp(v / t) for v in tr.tolist())
        zs = sum(math.exp(v / t) for v in sr.tolist())
        p = [math.exp(v / t) / zt for v in tr.tolist()]
        q = [math.exp(v / t) / zs for v in sr.tolist()]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * t * t / len(teacher)
    kd = build_losses({"kd": {"temperature": t}})[0]
    assert float(kd(step_inputs(teacher_scores=teacher, student_scores=student))) == pytest.approx(expected, rel=1e-6)


def _nce_by_hand(anchor, memory, indices, temperature, z, n):
    k = len(indices[0]) - 1
    noise = k / n
    total = 0.0
    for b, row in enumerate(indices):
        scores = [math.exp(sum(m * a for m, a in zip(memory[i], anchor[b])) / temperature) / z for i in row]
        total -= math.log(scores[0] / (scores[0] + noise + 1e-7))
        total -= sum(math.log(noise / (s + noise + 1e-7)) for s in scores[1:])
    return total / len(indices)


def test_codir_nce_with_given_negatives_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(10, 4, generator=gen), dim=-1)
    anchor = torch.nn.functional.normalize(torch.randn(2, 4, generator=gen), dim=-1)
    indices = torch.tensor([[3, 0, 5, 7], [8, 1, 2, 9]])  # column 0: the example itself
    z = 2.5
    got = nce_loss(nce_scores(anchor, memory, indices, 0.07) / z, n_data=10)
    expected = _nce_by_hand(anchor.tolist(), memory.tolist(), indices.tolist(), 0.07, z, 10)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_memory_bank_update_by_hand():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    momentum_update(memory, torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]), momentum=0.5)
    s = math.sqrt(0.5)
    assert memory.tolist()[0] == pytest.approx([s, s], rel=1e-6)  # (0.5, 0.5) normalised
    assert memory.tolist()[1] == [0.0, 1.0]  # not in the batch: untouched
    assert memory.tolist()[2] == pytest.approx([0.6, 0.8], rel=1e-6)  # same direction stays


def _codir_inputs(n_layers: int = 2, width: int = 4, batch: int = 3):
    from transformers import BertConfig

    config = BertConfig(hidden_size=width, num_hidden_layers=n_layers, num_attention_heads=1)
    gen = torch.Generator().manual_seed(1)
    hidden = lambda: tuple(torch.randn(batch, 5, width, generator=gen) for _ in range(n_layers + 1))  # noqa: E731
    from kdflow.features import Features

    mask = torch.ones(batch, 5, dtype=torch.long)
    return config, Features(mask=mask, hidden=hidden()), Features(mask=mask, hidden=hidden())


def test_codir_loss_and_bank_updates_follow_the_formulas():
    config, student, teacher = _codir_inputs()
    loss = CoDIR(negatives=3, dim=2, momentum=0.5)
    labels = (0, 1, 0, 1, 0, 1, 0, 1)
    loss.bind(
        LossContext(
            stage="stage2",
            n_examples=8,
            steps=1,
            seed=3,
            student_config=config,
            teacher_config=config,
            label_ids=labels,
        )
    )
    own = torch.tensor([0, 1, 2])
    bank_s, bank_t = loss.memory_student.clone(), loss.memory_teacher.clone()
    f_s, f_t = loss.features(step_inputs(student=student, teacher=teacher))
    negatives = sample_negatives(own, torch.tensor(labels), 8, 3, torch.Generator().manual_seed(3 * 1_000_003 + 5))
    assert all(labels[j] != labels[i] for i, row in zip(own.tolist(), negatives.tolist()) for j in row)
    indices = torch.cat([own[:, None], negatives], 1)
    f_s, f_t = f_s.detach(), f_t.detach()
    z_s = float(nce_scores(f_s, bank_t, indices, 0.07).mean() * 8)
    z_t = float(nce_scores(f_t, bank_s, indices, 0.07).mean() * 8)
    expected = _nce_by_hand(f_s.tolist(), bank_t.tolist(), indices.tolist(), 0.07, z_s, 8) + _nce_by_hand(
        f_t.tolist(), bank_s.tolist(), indices.tolist(), 0.07, z_t, 8
    )
    got = loss(step_inputs(student=student, teacher=teacher, example_ids=own, step=5))
    assert float(got) == pytest.approx(expected / 2 / len(own), rel=1e-4)  # CRDLoss's /2, fairseq's /batch
    for bank, before, feats in ((loss.memory_student, bank_s, f_s), (loss.memory_teacher, bank_t, f_t)):
        for row, i in enumerate(own.tolist()):
            mixed = [0.5 * a + 0.5 * b for a, b in zip(before[i].tolist(), feats[row].tolist())]
            norm = math.sqrt(sum(v * v for v in mixed))
            assert bank[i].tolist() == pytest.approx([v / norm for v in mixed], rel=1e-5)
        assert torch.equal(bank[3:], before[3:])  # examples outside the batch keep their entries


def test_pretraining_negatives_are_other_blocks():
    own = torch.tensor([0, 4])
    negatives = sample_negatives(own, None, 5, 50, torch.Generator().manual_seed(0))
    assert 0 not in negatives[0].tolist() and 4 not in negatives[1].tolist()
    assert set(negatives.flatten().tolist()) == {0, 1, 2, 3, 4}


def test_layer_maps_and_theseus_blocks():
    assert map_layers(3, 6) == [2, 4, 6] and map_layers(2, 6, "last") == [5, 6] and map_layers(2, 6, [1, 3]) == [1, 3]
    with pytest.raises(ConfigError, match="expected 2 teacher layers"):
        map_layers(2, 6, [1])
    assert [list(b) for b in layer_blocks(3, 6)] == [[0, 1], [2, 3], [4, 5]]


def test_theseus_with_every_layer_replaced_is_the_teacher(tiny_llama, tmp_path):
    init_student(tiny_llama, {"layers": {"strategy": "last", "count": 1}}, None, tmp_path / "s", seed=0)
    student, _, _ = load_lm(tmp_path / "s")
    teacher, _, _ = load_lm(tiny_llama)
    ids = torch.tensor([[5, 17, 300, 2]])
    with torch.no_grad(), theseus_layers(student, teacher, 0.0, torch.Generator().manual_seed(0)) as choice:
        hybrid = student(input_ids=ids).logits
    assert choice == [True]
    assert torch.allclose(hybrid, teacher(input_ids=ids).logits, atol=1e-5)
    with torch.no_grad(), theseus_layers(student, teacher, 1.0, torch.Generator().manual_seed(0)):
        plain = student(input_ids=ids).logits
    assert torch.allclose(plain, student(input_ids=ids).logits)
    assert len(student.state_dict()) == len(load_lm(tmp_path / "s")[0].state_dict())  # nothing left behind


def test_theseus_draw_of_teacher_layers_only_still_steps_with_zero_successor_gradients(tiny_llama, tmp_path):
    """A draw keeping no student layer: as in run_glue.py, backward runs and the successors get zero gradients
    (without the tie, autograd refuses: nothing in the graph requires grad)."""
    init_student(tiny_llama, {"layers": {"strategy": "last", "count": 1}}, None, tmp_path / "s", seed=0)
    student, _, _ = load_lm(tmp_path / "s")
    teacher, _, _ = load_lm(tiny_llama)
    teacher.requires_grad_(False)
    student.requires_grad_(False)
    layers = transformer_layers(student)
    layers.requires_grad_(True)
    ids = torch.tensor([[5, 17, 300, 2]])
    with theseus_layers(student, teacher, 0.0, torch.Generator().manual_seed(0)):
        scores = list(student(input_ids=ids).logits[:, -1].float())
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.stack(scores).logsumexp(-1).sum().backward()
    tied = tie_to_successors(scores, student)
    torch.stack(tied).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and not p.grad.any() for p in layers.parameters())
    assert torch.equal(torch.stack(tied), torch.stack(scores))


def test_attentions_need_eager_and_say_so(tiny_bert):
    model, _, _ = load_lm(tiny_bert)
    inputs = {"input_ids": torch.tensor([[101, 2000, 102]])}
    with pytest.raises(ConfigError, match="returned no attention maps"):
        forward_features(model, inputs, attentions=True)
    require_attentions(model)
    feats = forward_features(model, inputs, attentions=True, qkv=True, hidden=True)
    assert len(feats.attentions) == 2 and feats.attentions[0].shape == (1, 2, 3, 3)
    assert len(feats.qkv) == 2 and feats.qkv[0][2].shape == (1, 3, 32) and len(feats.hidden) == 3


def test_stsb_regression_head_distils_with_mse_logits(shared_data, tiny_bert, tmp_path):
    """STS-B on the encoder track: a regression-head teacher, and a student trained on mse_logits (+ codir)."""
    from kdflow.prepare import prepare_task

    task = tmp_path / "stsb"
    prepare_task(
        "stsb", {"name": "stsb", "max_examples": {"train": 16, "dev": 8}}, str(shared_data / "glue" / "STS-B"), task
    )
    finetune_classifier(tiny_bert, task, tmp_path / "teacher", tmp_path / "wt", TRAIN, None, seed=0)
    init_student(tiny_bert, {"layers": {"strategy": "last", "count": 1}}, None, tmp_path / "student", seed=0)
    run = {"student": "s", "stage2": {"losses": {"mse_logits": {}, "codir": SMALL_CODIR}}}
    data = {"cache": None, "task": task, "teacher": tmp_path / "teacher"}
    meta = distill("stage2", tmp_path / "student", tmp_path / "out", tmp_path / "w", run, TRAIN, data, None, seed=0)
    assert meta["task_type"] == "stsb"
    student, _, _ = load_lm(tmp_path / "out", keep_architecture=True)
    assert student.config.num_labels == 1 and student.config.problem_type == "regression"
    with pytest.raises(ConfigError, match="regression head"):
        distill(
            "stage2",
            tmp_path / "student",
            tmp_path / "out2",
            tmp_path / "w2",
            {"student": "s", "stage2": {"losses": {"ce": {}}}},
            TRAIN,
            data,
            None,
            seed=0,
        )


@pytest.mark.parametrize(("steps", "warned"), [(2, True), (3, False)])
def test_codir_warns_when_no_example_is_visited_twice(caplog, steps, warned):
    """CoDIR's positive is the example's own memory-bank entry: at its first visit still the bank's random
    start. Within one epoch (8 examples, 4 per step: 2 steps) no positive holds a feature yet."""
    config, _, _ = _codir_inputs()
    context = LossContext(
        stage="stage1",
        n_examples=8,
        steps=steps,
        seed=0,
        student_config=config,
        teacher_config=config,
        examples_per_step=4,
    )
    with caplog.at_level("WARNING", logger="kdflow.losses.codir"):
        CoDIR(negatives=3, dim=2).bind(context)
    assert ("visit each of the 8 examples at most once" in caplog.text) == warned
