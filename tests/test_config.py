"""Config validation: unknown keys and wrong types fail with the key's name, before any job runs."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from kdflow.config import load_config, validate_config
from kdflow.errors import ConfigError


@pytest.fixture()
def default_config(repo):
    return yaml.safe_load((repo / "config" / "config.yaml").read_text())


def test_default_and_tiny_configs_are_valid(repo):
    cfg = load_config(repo / "config" / "config.yaml")
    assert cfg["teacher"] == "smollm2"
    assert cfg["evaluate"]["batch_size"] == 16
    tiny = load_config(repo / "tests" / "config" / "tiny.yaml")
    assert tiny["models"]["tiny_llama"]["dtype"] == "float32"  # default filled inside a name->spec map
    assert tiny["preprocess"]["block_size"] == 128


def test_misspelled_key_is_named(default_config):
    default_config["evaluate"]["batch_sise"] = 8
    with pytest.raises(ConfigError, match=r"unknown config key 'evaluate\.batch_sise'"):
        validate_config(default_config)


def test_unknown_key_inside_a_model_is_named(default_config):
    default_config["models"]["smollm2"]["sorce"] = "x"
    with pytest.raises(ConfigError, match=r"models\.smollm2\.sorce"):
        validate_config(default_config)


def test_wrong_type_names_key_and_expected_type(default_config):
    default_config["evaluate"]["batch_size"] = "sixteen"
    with pytest.raises(ConfigError, match=r"'evaluate\.batch_size': expected an integer, got str 'sixteen'"):
        validate_config(default_config)


def test_unknown_teacher_and_task_type(default_config):
    default_config["teacher"] = "nobody"
    default_config["tasks"]["sentiment"]["name"] = "sst3"
    with pytest.raises(ConfigError) as info:
        validate_config(default_config)
    assert "'teacher': 'nobody' is not a key of 'models'" in str(info.value)
    assert "unknown task type 'sst3'" in str(info.value)


def test_random_model_requires_its_recipe(default_config):
    default_config["models"]["smollm2"] = {"source": "random"}
    with pytest.raises(ConfigError, match="architecture"):
        validate_config(default_config)


def test_snakemake_refuses_a_bad_config_at_start_up(repo, tmp_path, tool_env, default_config):
    default_config["evaluate"]["batch_sise"] = 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(default_config))
    proc = subprocess.run(
        ["snakemake", "-n", "--replace-workflow-config", "--configfile", str(bad)],
        cwd=repo,
        env=tool_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "evaluate.batch_sise" in proc.stdout + proc.stderr


# item 10 of issue 18: recipe mistakes that used to pass validation and fail after the teacher's fine-tuning
RECIPE_MISTAKES = [
    (
        "glmd",
        "stage1",
        {"word_kl": {"temprature": 15.0}},
        r"runs\.glmd\.stage1\.losses\.word_kl\.temprature': unknown setting of loss 'word_kl'",
    ),
    (
        "no_distill",
        "stage2",
        {"kd": {"weight": "half"}},
        r"runs\.no_distill\.stage2\.losses\.kd\.weight': loss 'kd': expected a number, got str 'half'",
    ),
    (
        "no_distill",
        "stage2",
        {"kd": {"temperature": -2}},
        r"runs\.no_distill\.stage2\.losses\.kd\.temperature': loss 'kd': expected a number > 0, got -2",
    ),
    (
        "no_distill",
        "stage2",
        {"lm": {}},
        r"runs\.no_distill\.stage2\.losses\.lm': loss 'lm' works in stage1 only, not in stage2",
    ),
    ("glmd", "stage1", {"theseus": {}}, r"runs\.glmd\.stage1\.losses\.theseus': loss 'theseus' works in stage2 only"),
    ("glmd", "stage1", {"kd": {}}, r"runs\.glmd\.stage1\.losses\.kd': loss 'kd' works in stage2 only"),
    (
        "codir",
        "stage2",
        {"tinybert": {"swich": 0.5}},
        r"runs\.codir\.stage2\.losses\.tinybert\.swich': unknown setting of preset 'tinybert'",
    ),
    (
        "codir",
        "stage2",
        {"tinybert": {"temperature": 0}},
        r"runs\.codir\.stage2\.losses\.tinybert\.temperature': loss 'candidate_kd' \(from preset 'tinybert'\): "
        r"expected a number > 0",
    ),
    (
        "no_distill",
        "stage2",
        {"kd": {"stop": 0.5}},
        r"runs\.no_distill\.stage2\.losses': no loss is active from 0\.50",
    ),
    ("codir", "stage2", {"word_kl": {}}, r"runs\.codir\.stage2\.losses': word_kl learn\(s\) word predictions"),
]


@pytest.mark.parametrize(
    ("run", "stage", "losses", "message"), RECIPE_MISTAKES, ids=[m[3][:40] for m in RECIPE_MISTAKES]
)
def test_recipe_mistakes_are_refused_naming_run_stage_loss_and_key(default_config, run, stage, losses, message):
    default_config["runs"][run][stage] = {"losses": losses}
    with pytest.raises(ConfigError, match=message):
        validate_config(default_config)


def test_phases_and_task_losses_are_checked_too(default_config):
    default_config["runs"]["glmd"]["stage2"]["phases"][1]["losses"] = {"candidate_kd": {"temperature": -1}}
    default_config["runs"]["codir"]["stage2"]["task_losses"] = {"sentiment": {"ce": {"temprature": 2}}}
    default_config["runs"]["no_distill"]["stage2"] = {"losses": {"ce": {}}, "phases": [{"losses": {"ce": {}}}]}
    with pytest.raises(ConfigError) as info:
        validate_config(default_config)
    text = str(info.value)
    assert (
        "runs.glmd.stage2.phases[1].losses.candidate_kd.temperature': loss 'candidate_kd': expected a number > 0"
        in text
    )
    assert "runs.codir.stage2.task_losses.sentiment.ce.temprature': unknown setting of loss 'ce'" in text
    assert "runs.no_distill.stage2': give either 'losses' or 'phases'" in text


def test_snakemake_refuses_a_misspelled_loss_setting_at_start_up(repo, tmp_path, tool_env, default_config):
    default_config["runs"]["glmd"]["stage2"]["phases"][0]["losses"]["word_kl"]["temprature"] = 15
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(default_config))
    for cmd in (
        ["snakemake", "-n", "--replace-workflow-config", "--configfile", str(bad)],
        ["kdflow", "validate-config", str(bad)],
    ):
        proc = subprocess.run(cmd, cwd=repo, env=tool_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert "runs.glmd.stage2.phases[0].losses.word_kl.temprature': unknown setting" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "path", sorted((__import__("conftest").REPO / "config" / "experiments").glob("*.yaml")), ids=lambda p: p.name
)
def test_experiment_configs_validate_and_resolve(path, repo, tool_env, tmp_path):
    config = load_config(path)
    local = [t["source"] for t in config["tasks"].values() if t["source"].startswith("../")]
    if local and not (repo / local[0]).exists():
        pytest.skip(f"{path.name} reads {local[0]}, which is absent here")
    workdir = repo if local else tmp_path  # paths like ../shared/data are relative to the repository
    proc = subprocess.run(
        [
            "snakemake",
            "-n",
            "--forceall",
            "--quiet",
            "rules",
            "-d",
            str(workdir),
            "-s",
            str(repo / "Snakefile"),
            "--replace-workflow-config",
            "--configfile",
            str(path),
        ],
        cwd=repo,
        env=tool_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("distill_stage2" if config["runs"] else "evaluate") in proc.stdout
    assert "summarize" in proc.stdout
