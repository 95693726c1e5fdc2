"""Fault injection: every fault ends with results equal to a clean run of the final settings, or with an error
that names the problem before anything is trusted. README's reliability table lists these tests."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_CACHE, TINY_TRAIN, pack_text, stage1_args, tiny_cmd
from safetensors.torch import load_file

from kdflow import cli
from kdflow.assets.models import build_model
from kdflow.assets.sentiment import build_sentiment_task
from kdflow.cache.build import cache_corpus, cache_task
from kdflow.cache.reader import CorpusCacheDataset, TaskCacheDataset
from kdflow.data.files import read_jsonl, read_tsv
from kdflow.distill import distill
from kdflow.errors import ConfigError, DataError
from kdflow.fingerprint import stat_fingerprint
from kdflow.jsonio import write_json
from kdflow.locks import BusyError, hold_lock
from kdflow.plots import read_train_log
from kdflow.prepare import prepare_task
from kdflow.safeio import WriteError
from kdflow.students import init_student
from kdflow.train.loop import TrainingError, TrainSettings, train
from kdflow.train.workdir import WorkDir
from kdflow.vocab.stage import compress_vocab

TRAIN = TINY_TRAIN
CACHE = TINY_CACHE
RUN = {"student": "s", "stage1": {"losses": {"word_kl": {"temperature": 15.0}}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("faults")
    pack_text(root, tiny_llama, name="corpus")
    cache_corpus(tiny_llama, root / "corpus", None, root / "cache", CACHE, seed=0)
    init_student(tiny_llama, {"layers": {"strategy": "last", "count": 1}}, None, root / "student", seed=0)
    return root


def _cmd(setup: Path, teacher: Path, out: Path, work: Path, settings: dict, cache: Path | None = None) -> list[str]:
    args = stage1_args(setup / "student", RUN, settings, cache or setup / "cache", setup / "corpus", teacher, out, work)
    return [sys.executable, "-m", "kdflow", *args]


def _run(cmd: list[str], env: dict[str, str], fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, env={**env, **({"KDFLOW_FAULT": fault} if fault else {})}, capture_output=True, text=True, timeout=600
    )


def _log(folder: Path) -> list[dict[str, str]]:
    with open(folder / "train_log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _clean(setup, tiny_llama, tmp_path, settings, name="clean") -> Path:
    distill(
        "stage1",
        setup / "student",
        tmp_path / name,
        tmp_path / f"w{name}",
        RUN,
        settings,
        {"cache": setup / "cache", "corpus": setup / "corpus", "teacher": tiny_llama},
        None,
        seed=0,
    )
    return tmp_path / name


def _losses(rows):
    return [(r["step"], r["loss"]) for r in rows]


# --- kill -9 during training, during the save, and a finished job run again ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["train_step:3", "before_save:1"], ids=["kill-at-step-3", "kill-while-saving"])
def test_killed_training_resumes_to_the_clean_weights_and_full_log(setup, tiny_llama, tmp_path, tool_env, fault):
    clean = _clean(setup, tiny_llama, tmp_path, TRAIN)
    cmd = _cmd(setup, tiny_llama, tmp_path / "out", tmp_path / "work", TRAIN)
    assert _run(cmd, tool_env, fault).returncode == 137
    assert not (tmp_path / "out").exists()
    done = _run(cmd, tool_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _same_weights(clean, tmp_path / "out")
    assert _losses(_log(tmp_path / "out")) == _losses(_log(clean))  # steps 1..4, none lost on a resume at the end
    assert [r["step"] for r in _log(clean)] == [str(s) for s in range(1, 5)]
    assert not (tmp_path / "work").exists()  # a finished job leaves no checkpoint to resume


@pytest.mark.slow
def test_finished_job_run_again_gives_the_same_result(setup, tiny_llama, tmp_path, tool_env):
    """SIGKILL of snakemake while its job (the orphan) finished: snakemake reruns the job as incomplete."""
    clean = _clean(setup, tiny_llama, tmp_path, TRAIN)
    cmd = _cmd(setup, tiny_llama, tmp_path / "out", tmp_path / "work", TRAIN)
    for _ in range(2):
        proc = _run(cmd, tool_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _same_weights(clean, tmp_path / "out") and _losses(_log(tmp_path / "out")) == _losses(_log(clean))


# --- changed settings never resume another run's checkpoint ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("change", [{"lr": 5e-3}, {"max_steps": 3}], ids=["lr", "max_steps"])
def test_changed_settings_discard_the_stale_checkpoint(setup, tiny_llama, tmp_path, tool_env, change):
    final = {**TRAIN, **change}
    clean = _clean(setup, tiny_llama, tmp_path, final)
    assert (
        _run(_cmd(setup, tiny_llama, tmp_path / "out", tmp_path / "work", TRAIN), tool_env, "train_step:3").returncode
        == 137
    )
    assert (tmp_path / "work" / "checkpoint" / "checkpoint.pt").exists()
    done = _run(_cmd(setup, tiny_llama, tmp_path / "out", tmp_path / "work", final), tool_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "discarding the checkpoint and log of another run" in done.stderr
    assert ("settings.lr" if "lr" in change else "settings.max_steps") in done.stderr
    assert _same_weights(clean, tmp_path / "out") and _losses(_log(tmp_path / "out")) == _losses(_log(clean))
    assert json.loads((tmp_path / "out" / "kdflow.json").read_text())["settings"] == final


def test_changed_student_discards_the_stale_checkpoint(setup, tiny_llama, tmp_path):
    with WorkDir(tmp_path / "w", {"inputs": {"student": "aaa"}}) as work:
        (work.checkpoint).mkdir()
        (work.checkpoint / "checkpoint.pt").write_bytes(b"old")
    with WorkDir(tmp_path / "w", {"inputs": {"student": "bbb"}}) as work:
        assert not work.checkpoint.exists() and work.resumable()


# --- teacher and tokenizer changes are refused by the cache readers -----------------------------------------


@pytest.mark.slow
def test_a_changed_teacher_is_refused_by_the_corpus_cache(setup, tiny_llama, tmp_path, tool_env):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_llama, teacher)
    weights = load_file(teacher / "model.safetensors")
    weights = {k: v + 0.01 for k, v in weights.items()}
    from safetensors.torch import save_file

    save_file(weights, str(teacher / "model.safetensors"), metadata={"format": "pt"})
    proc = _run(_cmd(setup, teacher, tmp_path / "out", tmp_path / "work", TRAIN), tool_env)
    assert proc.returncode == 2 and "logit cache was built from other inputs" in proc.stderr
    assert "teacher:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="teacher"):
        CorpusCacheDataset(setup / "cache", setup / "corpus", tokenizer_dir=teacher)


def test_a_changed_tokenizer_is_refused_by_the_task_cache(tmp_path, tiny_llama, sentiment_task):
    cache_task(tiny_llama, sentiment_task, None, tmp_path / "tcache", CACHE)
    TaskCacheDataset(tmp_path / "tcache", sentiment_task, teacher_dir=tiny_llama)  # the same teacher: accepted
    other = tmp_path / "teacher"
    shutil.copytree(tiny_llama, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["model_max_length"] = 77
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="tokenizer"):
        TaskCacheDataset(tmp_path / "tcache", sentiment_task, teacher_dir=other)


def test_a_changed_local_model_is_rebuilt(tmp_path, tiny_llama):
    """build_model's params carry the stat fingerprint of a local source; its kdflow.json the content's."""
    before = stat_fingerprint(tiny_llama)
    local = tmp_path / "local"
    shutil.copytree(tiny_llama, local)
    state = stat_fingerprint(local)
    meta = build_model({"source": str(local)}, tmp_path / "built")
    os.utime(local / "model.safetensors", ns=(1, 1))  # edited in place: same names, another time
    assert stat_fingerprint(local) != state and stat_fingerprint(tiny_llama) == before
    assert meta["source_sha256"] and meta["weights_sha256"]


# --- NaN before and after a checkpoint, divergence ----------------------------------------------------------


@pytest.mark.slow
def test_nan_weights_are_never_checkpointed_and_a_corrected_rerun_starts_clean(setup, tiny_llama, tmp_path, tool_env):
    cmd = _cmd(setup, tiny_llama, tmp_path / "out", tmp_path / "work", TRAIN)
    failed = _run(cmd, tool_env, "nan_weights:4")
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "not finite after step 4" in failed.stderr and "last finite checkpoint (step 2)" in failed.stderr
    state = torch.load(tmp_path / "work" / "checkpoint" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r["step"] for r in _log(tmp_path / "work")] == ["1", "2", "3", "4"]  # same numbering as the message
    final = {**TRAIN, "lr": 5e-4}
    clean = _clean(setup, tiny_llama, tmp_path, final)
    done = _run(_cmd(setup, tiny_llama, tmp_path / "out", tmp_path / "work", final), tool_env)
    assert done.returncode == 0 and _same_weights(clean, tmp_path / "out")


def _linear_loss(values):
    def loss_fn(module, indices, step):
        out = module(torch.ones(len(indices), 4)).sum() * 0 + values(step)
        return out, {"loss": float(out.detach())}, len(indices)

    return loss_fn


def test_nan_loss_before_any_checkpoint_says_so(tmp_path):
    settings = TrainSettings(steps=5, batch_size=2, checkpoint_every=2)
    with pytest.raises(TrainingError, match="at step 1 .*no checkpoint was written yet"):
        with WorkDir(tmp_path / "w", {}) as work:
            train(torch.nn.Linear(4, 1), _linear_loss(lambda s: float("nan")), 4, settings, work)


def test_a_diverging_run_stops(tmp_path):
    settings = TrainSettings(steps=40, batch_size=2, checkpoint_every=100)
    with pytest.raises(TrainingError, match="loss diverged.*divergence_factor = 100"):
        with WorkDir(tmp_path / "w", {}) as work:
            train(torch.nn.Linear(4, 1), _linear_loss(lambda s: 2.0 * 2.0**s), 4, settings, work)
    relaxed = TrainSettings(steps=12, batch_size=2, checkpoint_every=100, divergence_factor=None)
    with WorkDir(tmp_path / "w2", {}) as work:
        train(torch.nn.Linear(4, 1), _linear_loss(lambda s: 2.0 * 2.0**s), 4, relaxed, work)


# --- two runs at once ---------------------------------------------------------------------------------------


def test_two_jobs_cannot_train_into_one_work_folder(tmp_path):
    with WorkDir(tmp_path / "w", {"a": 1}):
        with pytest.raises(BusyError, match=r"pid \d+ .* is already training into this folder"):
            with WorkDir(tmp_path / "w", {"a": 2}):
                pass
    with WorkDir(tmp_path / "w", {"a": 2}):  # released with its holder
        pass


@pytest.mark.slow
def test_two_snakemake_runs_cannot_share_a_results_folder(repo, tool_env, tmp_path):
    """Snakemake's own lock is per working directory; kdflow's is per results folder."""
    results = tmp_path / "shared-results"
    held = hold_lock(results / ".kdflow-run.lock", "running snakemake on this results folder")
    try:
        cmd = tiny_cmd(repo, tmp_path / "elsewhere") + ["--config", f"results={results}"]
        proc = subprocess.run(cmd, cwd=repo, env=tool_env, capture_output=True, text=True, timeout=300)
    finally:
        held.close()
    assert proc.returncode != 0
    assert f"pid {os.getpid()}" in proc.stdout + proc.stderr
    assert not (results / "assets").exists()  # no job ran


def test_a_torn_log_line_is_named(tmp_path):
    path = tmp_path / "train_log.csv"
    path.write_text("step,loss,lr\n1,2.5,0.1\n2,2.4,0.1\n.7\n")
    with pytest.raises(DataError, match=r"train_log.csv:4: damaged"):
        read_train_log(path)
    path.write_text("step,loss,lr\n")
    with pytest.raises(DataError, match="no steps"):
        read_train_log(path)


# --- I/O errors: disk full, read-only folders ---------------------------------------------------------------


def test_disk_full_on_a_checkpoint_names_the_path_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", full)
    settings = TrainSettings(steps=2, batch_size=2, checkpoint_every=1)
    with pytest.raises(
        WriteError, match=r"checkpoint.pt: writing failed \(RuntimeError: .*iostream error; .* MiB free"
    ):
        with WorkDir(tmp_path / "w", {}) as work:
            train(torch.nn.Linear(4, 1), _linear_loss(lambda s: 1.0), 4, settings, work)
    assert not list((tmp_path / "w" / "checkpoint").glob("*"))


def test_disk_full_on_a_shard_names_the_path(tmp_path, tiny_llama, setup, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=r"shard_00000.npz: writing failed \(ENOSPC: No space left on device"):
        cache_corpus(tiny_llama, setup / "corpus", None, tmp_path / "cache", CACHE, seed=0)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_a_read_only_folder_is_named_without_a_traceback(tmp_path, monkeypatch, capsys):
    """As root (CI) chmod does not stop writes, so the kernel's answer to a read-only folder is injected."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(tmp_path / "ro" / "x"))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(WriteError, match=r"ro/x: cannot write \(EROFS: Read-only file system\); check the folder"):
        write_json(tmp_path / "ro" / "x" / "a.json", {})
    code = cli.main(["build-corpus", "--source", "embedded:package-texts", "--out", str(tmp_path / "ro" / "c.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "Read-only file system" in err and "Traceback" not in err


# --- data: encodings, BOM, missing files ----------------------------------------------------------------------


def test_non_utf8_bytes_are_named_by_file_and_line(tmp_path):
    (tmp_path / "a.tsv").write_bytes(b"sentence\tlabel\ngood\t1\ncaf\xe9\t0\n")
    with pytest.raises(DataError, match=r"a.tsv:3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        list(read_tsv(tmp_path / "a.tsv", ["sentence", "label"]))
    (tmp_path / "a.jsonl").write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: not UTF-8"):
        list(read_jsonl(tmp_path / "a.jsonl"))


def test_a_bom_is_handled_alike_in_tsv_and_jsonl(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert [o for _, o in read_jsonl(tmp_path / "a.jsonl")] == [{"a": 1}, {"a": 2}]
    (tmp_path / "a.tsv").write_bytes(b"\xef\xbb\xbfsentence\tlabel\nx\t1\n")
    assert [r for _, r in read_tsv(tmp_path / "a.tsv", ["sentence"])] == [{"sentence": "x", "label": "1"}]


def test_a_missing_split_the_run_needs_fails_at_prepare_time(tmp_path):
    build_sentiment_task("embedded:rotten-tomatoes", tmp_path / "raw", seed=0)
    (tmp_path / "raw" / "train.tsv").unlink()
    spec = {"name": "sst2", "max_examples": {"dev": 4, "test": 4}}
    prepare_task("s", spec, str(tmp_path / "raw"), tmp_path / "ok", ["dev"])  # not needed: skipped with a warning
    with pytest.raises(DataError, match=r"raw/train.tsv: file not found; task s needs its train split"):
        prepare_task("s", spec, str(tmp_path / "raw"), tmp_path / "bad", ["train", "dev"])


def test_a_vocabulary_smaller_than_its_must_keep_set_names_the_key(tmp_path, tiny_llama, sentiment_task):
    from kdflow.vocab.counts import count_tokens

    pack_text(tmp_path, tiny_llama, name="corpus")
    count_tokens(tmp_path / "corpus", tiny_llama, [], tmp_path / "counts.csv")
    with pytest.raises(ConfigError, match=r"vocabularies.tiny.size: vocabulary size 8 .* smaller than the must-keep"):
        compress_vocab(
            tmp_path / "counts.csv",
            tiny_llama,
            [str(sentiment_task)],
            {"size": 8, "round_to": 8},
            tmp_path / "v",
            name="tiny",
        )
