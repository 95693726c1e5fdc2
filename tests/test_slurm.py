"""The tiny pipeline through `snakemake --profile profiles/slurm` on a real one-node SLURM cluster.

The cluster (Debian slurm-wlm + munge, a fake 2-GPU gres) is installed when this machine can (root +
apt-get), started for this module and stopped after it. The test checks that every non-local job went
through sbatch, that the GPU rules asked for GPUs on the `gpu` partition and the others did not, and that
the outputs of three of the tiny config's runs (which reach every rule) equal the local run's of all its runs.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_checked, tiny_cmd
from slurm_cluster import OneNodeCluster, ensure_installed

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

LOCAL_RULES = {"build_task", "prepare_task", "build_corpus", "summarize", "default", "all"}


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the SLURM test needs Linux")
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    cluster = OneNodeCluster(tmp_path_factory.mktemp("slurm"))
    reason = cluster.foreign_config()
    if reason:
        pytest.skip(reason)
    cluster.start()
    yield cluster
    cluster.stop()


def _rule(comment: str) -> str:
    match = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", comment)
    assert match, f"job comment {comment!r} does not name a rule"
    return match.group(1)


def _gpu_rules(repo: Path) -> dict[str, dict]:
    cfg = yaml.safe_load((repo / "tests" / "config" / "tiny.yaml").read_text())
    return {r: v for r, v in cfg["resources"]["rules"].items() if v.get("gpu") or v.get("gres")}


def _comparable(results: Path) -> dict[str, object]:
    """What must not depend on where the jobs ran: metrics, predictions, cache shard checksums, vocab maps."""
    out: dict[str, object] = {}
    for path in sorted((results / "metrics").rglob("*.json")):
        out[str(path.relative_to(results))] = json.loads(path.read_text())["metrics"]
    for path in sorted((results / "predictions").rglob("*.jsonl")):
        out[str(path.relative_to(results))] = path.read_text()
    for path in sorted((results / "cache").rglob("manifest.json")):
        out[str(path.relative_to(results))] = [s["sha256"] for s in json.loads(path.read_text())["shards"]]
    for path in sorted((results / "vocab").rglob("map.json")):
        out[str(path.relative_to(results))] = path.read_text()
    return out


def _rule_counts(repo: Path, workdir: Path, tool_env: dict[str, str], config: Path | None = None) -> dict[str, int]:
    """Jobs per rule of a dry run of the whole DAG (the tiny config, or ``config``)."""
    cmd = tiny_cmd(repo, workdir, config=config) + ["-n", "--forceall", "--quiet", "rules"]
    plan = run_checked(cmd, repo, tool_env).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", plan, re.M)}


def _three_run_config(repo: Path, tmp_path: Path) -> Path:
    """The tiny config with three of its runs, which between them reach every rule of its DAG: glmd (fine-tuned
    teacher, vocabulary compression, corpus and task caches, both stages), glmd_full_vocab (the transfer set
    that fills the full-vocabulary task cache as the whole config does) and codir (the classifier fine-tuning,
    an online encoder teacher). Fewer jobs: each sbatch job pays a Snakemake start-up."""
    cfg = yaml.safe_load((repo / "tests" / "config" / "tiny.yaml").read_text())
    cfg["runs"] = {name: cfg["runs"][name] for name in ("glmd", "glmd_full_vocab", "codir")}
    path = tmp_path / "three_runs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_pipeline_on_slurm_matches_local(repo, tool_env, tiny_run, slurm_cluster, tmp_path):
    config, workdir = _three_run_config(repo, tmp_path), tmp_path / "slurm_run"
    counts = _rule_counts(repo, tmp_path / "plan", tool_env, config)
    assert set(counts) == set(_rule_counts(repo, tmp_path / "plan_all", tool_env))  # every rule is reached
    executor = _executor(repo, jobs=4)
    cmd = tiny_cmd(repo, workdir, *executor, config=config)
    proc = run_checked(cmd, repo, slurm_cluster.env(tool_env), timeout=1800)
    assert "slurm" in proc.stdout + proc.stderr

    jobs = slurm_cluster.jobs()
    by_rule: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        by_rule.setdefault(_rule(job["Comment"]), []).append(job)
    assert all(job["JobState"] == "COMPLETED" for job in jobs), [(j["Comment"], j["JobState"]) for j in jobs]
    assert not set(by_rule) & LOCAL_RULES, "local rules were submitted to SLURM"

    expected = {rule: n for rule, n in counts.items() if rule not in LOCAL_RULES | {"total"}}
    assert {rule: len(js) for rule, js in by_rule.items()} == expected

    gpu_rules = _gpu_rules(repo)
    assert {"distill_stage1", "distill_stage2", "cache_logits_task"} <= set(gpu_rules)
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            tres = job.get("TresPerJob", "") + job.get("TresPerNode", "")
            if rule in gpu_rules:
                assert "gpu:1" in tres, f"{rule} was submitted without a GPU request: {job}"
                assert job["Partition"] == "gpu"
            else:
                assert "gpu" not in tres and job["Partition"] == "cpu", f"{rule}: {job}"
    mem = {job["MinMemoryNode"] for job in by_rule["distill_stage2"]}
    assert mem == {"2500M"}, mem

    # the three runs' outputs (and the teachers', caches', vocabularies') equal the local run of all the runs
    local, remote = _comparable(tiny_run / "results"), _comparable(workdir / "results")
    assert len(remote) > 12 and remote.keys() <= local.keys()
    assert any(key.startswith("metrics/runs/codir") for key in remote), sorted(remote)
    for key in remote:
        assert (
            remote[key] == pytest.approx(local[key]) if isinstance(local[key], dict) else remote[key] == local[key]
        ), key


def _executor(repo: Path, jobs: int) -> tuple[str, ...]:
    """The SLURM profile on the test cluster (no accounting: job states from squeue)."""
    return (
        "--profile",
        str(repo / "profiles" / "slurm"),
        "--jobs",
        str(jobs),
        "--slurm-status-command",
        "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--local-cores",
        "1",
    )


def _losses(folder: Path) -> list[float]:
    with open(folder / "train_log.csv", encoding="utf-8") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def test_a_two_task_srun_job_matches_one_process(repo, tool_env, tiny_run, slurm_cluster, tmp_path):
    """`nodes: 1, processes: 2` makes distill_stage1 an srun job of 2 tasks (`--ntasks-per-node=2`), whose
    ranks come from SLURM's environment (2 CPU processes, gloo); its losses equal the local single-process
    run's. The upstream results are copied from the local tiny run, so that only that one job is submitted."""
    cfg = yaml.safe_load((repo / "tests" / "config" / "tiny.yaml").read_text())
    cfg["resources"]["rules"]["distill_stage1"] = {"nodes": 1, "processes": 2, "slurm_partition": "cpu"}
    config = tmp_path / "srun.yaml"
    config.write_text(yaml.safe_dump(cfg))
    workdir = tmp_path / "srun_run"
    shutil.copytree(tiny_run / "results", workdir / "results", symlinks=True)
    target = "results/runs/glmd/stage1"
    shutil.rmtree(workdir / target)
    dry = ("-n", "-p")
    plan = run_checked(tiny_cmd(repo, workdir, *dry, config=config, targets=(target,)), repo, tool_env).stdout
    assert "srun --kill-on-bad-exit=1 --nodes 1 --ntasks-per-node 2 kdflow distill --stage stage1" in plan
    assert re.search(r"^distill_stage1\s+1$", plan, re.M) and re.search(r"^total\s+1$", plan, re.M), plan
    executor = _executor(repo, jobs=1)
    before = {job.get("JobId") for job in slurm_cluster.jobs()}
    cmd = tiny_cmd(repo, workdir, *executor, config=config, targets=(target,))
    run_checked(cmd, repo, slurm_cluster.env(tool_env), timeout=1200)
    (job,) = [j for j in slurm_cluster.jobs() if "JobId" in j and j["JobId"] not in before]
    assert _rule(job["Comment"]) == "distill_stage1" and job["JobState"] == "COMPLETED", job
    assert job["NumTasks"] == "2", job
    log = (workdir / "results" / "logs" / "distill_stage1" / "glmd.log").read_text()
    assert "world_size 2" in log and "launcher slurm" in log, log[-2000:]
    assert _losses(workdir / target) == pytest.approx(_losses(tiny_run / target), rel=1e-4)
