"""This process's place among the data-parallel processes (torchrun or SLURM ``srun``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list (``gpu[03-05,07],cpu1`` -> ``gpu03``), as ``scontrol show
    hostnames`` would print it first."""
    match = re.match(r"([^\[,]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ConfigError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes: from torchrun (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR/PORT) or, under ``srun`` with one task per GPU, from SLURM (SLURM_PROCID, SLURM_LOCALID,
    SLURM_NTASKS, the first host of the node list, a port derived from the job id)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ranks:
        env = os.environ if env is None else env
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(
                int(env["RANK"]),
                int(env.get("LOCAL_RANK", env["RANK"])),
                int(env["WORLD_SIZE"]),
                env.get("MASTER_ADDR", "127.0.0.1"),
                int(env.get("MASTER_PORT", 29500)),
                "torchrun",
            )
        if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
            port = 20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000
            return cls(
                int(env["SLURM_PROCID"]),
                int(env.get("SLURM_LOCALID", "0")),
                int(env["SLURM_NTASKS"]),
                first_host(nodes) if nodes else "127.0.0.1",
                port,
                "slurm",
            )
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def export(self) -> None:
        """Set the variables ``torch.distributed`` (env://) and DeepSpeed read, when SLURM launched us."""
        if self.launcher == "slurm":
            for key, value in (
                ("RANK", self.rank),
                ("LOCAL_RANK", self.local_rank),
                ("WORLD_SIZE", self.size),
                ("MASTER_ADDR", self.master_addr),
                ("MASTER_PORT", self.master_port),
            ):
                os.environ.setdefault(key, str(value))
