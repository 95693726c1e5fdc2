"""The runtime: ranks from torchrun and SLURM, device resolution (never a silent CPU fallback for a GPU job),
moves of every batch container, autocast, and the device audit that checks placement without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from transformers import BatchEncoding

from kdflow.device_audit import DeviceAudit
from kdflow.errors import ConfigError
from kdflow.ranks import Ranks, first_host
from kdflow.runtime import Runtime, compute_settings
from kdflow.train.engines import deepspeed_precision


def test_torchrun_environment():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "node7", "MASTER_PORT": "29411"}
    assert Ranks.from_env(env) == Ranks(3, 1, 8, "node7", 29411, "torchrun")


def test_slurm_environment_one_task_per_gpu():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu[03-04,09]",
    }
    ranks = Ranks.from_env(env)
    assert (ranks.rank, ranks.local_rank, ranks.size, ranks.master_addr) == (5, 1, 8, "gpu03")
    assert ranks.launcher == "slurm" and ranks.master_port == 20000 + 123456 % 20000
    assert Ranks.from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == Ranks()  # one task: no rendezvous


@pytest.mark.parametrize(
    ("nodes", "first"), [("a1", "a1"), ("n[7-9]", "n7"), ("gpu[12,14-15],cpu1", "gpu12"), ("x-y[001-002]", "x-y001")]
)
def test_first_host_of_a_node_list(nodes, first):
    assert first_host(nodes) == first


def test_auto_device_is_the_cpu_without_cuda_and_a_gpu_job_stops():
    assert Runtime.create({"device": "auto"}, env={}, cuda_available=False).device == torch.device("cpu")
    with pytest.raises(ConfigError, match="asked for 2 GPU.* no CUDA device is visible.*compute.device: cpu"):
        Runtime.create({"device": "auto"}, gpus=2, env={}, cuda_available=False)
    assert Runtime.create({"device": "cpu"}, gpus=2, env={}, cuda_available=False).device.type == "cpu"  # opt-out
    with pytest.raises(ConfigError, match="no CUDA device"):
        Runtime.create({"device": "cuda"}, env={}, cuda_available=False)
    rt = Runtime.create(
        {"device": "auto"}, gpus=1, env={"RANK": "0", "LOCAL_RANK": "3", "WORLD_SIZE": "4"}, cuda_available=True
    )
    assert rt.device == torch.device("cuda:3") and rt.backend == "nccl"


def test_compute_settings_are_checked():
    assert compute_settings(None)["precision"] == "fp32"
    for bad, key in (({"precision": "fp8"}, "precision"), ({"device": "tpu"}, "device"), ({"dtype": "x"}, "unknown")):
        with pytest.raises(ConfigError, match=key):
            compute_settings(bad)


@dataclass
class _Feats:
    hidden: list[torch.Tensor]
    mask: torch.Tensor


def test_to_moves_every_container_and_the_audit_sees_it():
    with DeviceAudit() as audit:
        rt = Runtime(audit=audit)
        enc = BatchEncoding({"input_ids": torch.ones(2, 3, dtype=torch.long)})
        moved = rt.to(
            {
                "a": [torch.ones(2)],
                "b": (torch.zeros(3),),
                "enc": enc,
                "f": _Feats([torch.ones(2, 2)], torch.ones(2)),
                "n": 3,
            }
        )
        assert audit.on_device(moved["a"][0]) and audit.on_device(moved["b"][0])
        assert audit.on_device(moved["enc"]["input_ids"]) and audit.on_device(moved["f"].hidden[0])
        assert audit.on_device(moved["f"].mask) and moved["n"] == 3
        _ = moved["a"][0] * 2 + torch.tensor(1.0)  # a host scalar is allowed, as on CUDA
        assert audit.violations == []
        _ = moved["a"][0] + torch.ones(2)  # a host vector is not
    assert len(audit.violations) == 1 and "add" in audit.violations[0]


def test_audit_of_a_placed_model_training_step():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=64,
        )
    )
    with DeviceAudit() as audit:
        rt = Runtime(audit=audit)
        model = rt.place(model)
        optimizer = torch.optim.AdamW(model.parameters(), fused=True)
        ids = rt.to(torch.randint(0, 64, (2, 8)))
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        assert audit.violations == []
        model(input_ids=torch.randint(0, 64, (2, 8)))  # a batch that was never moved
    assert audit.violations and "embedding" in audit.violations[0]


def test_bf16_autocast_on_cpu_and_deepspeed_precision():
    rt = Runtime(settings={**compute_settings(None), "precision": "bf16"})
    with rt.autocast():
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype == torch.bfloat16
    assert deepspeed_precision({}, "bf16") == {"bf16": {"enabled": True}, "fp16": {"enabled": False}}
    assert deepspeed_precision({"bf16": {"enabled": False}}, "bf16")["bf16"] == {"enabled": False}  # config wins
    assert Runtime().grad_scaler() is None


def test_huge_pages_switch_is_on_unless_the_user_set_it(monkeypatch):
    from kdflow import cli
    from kdflow.hostmem import HUGE_PAGES, with_huge_pages

    assert with_huge_pages({})[HUGE_PAGES] == "1"
    assert with_huge_pages({HUGE_PAGES: "0"})[HUGE_PAGES] == "0"
    monkeypatch.delenv(HUGE_PAGES, raising=False)
    assert cli.main(["validate-config", "/nonexistent/config.yaml"]) == 2  # a command that stops at once
    assert os.environ[HUGE_PAGES] == "1"  # the command line set it before its command ran


def test_huge_pages_back_a_large_tensor_where_the_kernel_offers_them(tmp_path):
    """In a process started with the switch, a 64 MiB tensor lies on 2 MiB pages (the kernel's THP counters
    of the process grow by its size); without it, on 4 KiB pages."""
    from kdflow.hostmem import HUGE_PAGES, kernel_mode

    if kernel_mode() not in ("madvise", "always"):
        pytest.skip(f"the kernel offers no transparent huge pages here (mode {kernel_mode()})")
    probe = (
        "import torch\n"
        "def huge():\n"
        "    text = open('/proc/self/smaps_rollup').read()\n"
        "    return int(text.split('AnonHugePages:')[1].split()[0])\n"
        "before = huge(); x = torch.ones(16 * 2**20); print(huge() - before)\n"
    )
    grown = {}
    for value in ("0", "1"):
        env = {**os.environ, HUGE_PAGES: value}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        grown[value] = int(out.stdout.split()[-1])
    assert grown["1"] >= 60 * 1024  # kB: nearly all of the 64 MiB
    if kernel_mode() == "madvise":
        assert grown["0"] == 0
