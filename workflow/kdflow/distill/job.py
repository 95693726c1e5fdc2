"""What one distillation job is: ``DistillJob`` (the stage, folders, run, settings, inputs, seed, runtime)
and the identity a finished training (or phase) is recognised by."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fingerprint import job_identity
from ..runtime import Runtime


@dataclass(frozen=True)
class DistillJob:
    """One training of ``student_dir`` for ``stage`` (stage1: corpus, stage2: task) into ``out_dir``.
    ``data`` holds the input folders: ``teacher``, ``cache``, and ``corpus`` or ``task``."""

    stage: str
    student_dir: Path
    out_dir: Path
    work_dir: Path
    run: dict[str, Any]
    settings: dict[str, Any]
    data: dict[str, Any]
    deepspeed: dict[str, Any] | None
    seed: int
    runtime: Runtime

    @property
    def vocab_map(self) -> Path | None:
        """The student's vocabulary map (a compressed vocabulary), if it has one."""
        path = self.student_dir / "vocab_map.json"
        return path if path.exists() else None

    def with_folders(self, student_dir: Path, out_dir: Path, work_dir: Path) -> DistillJob:
        """The same job from another student into other folders (one phase of a stage)."""
        return dataclasses.replace(self, student_dir=Path(student_dir), out_dir=Path(out_dir), work_dir=Path(work_dir))

    def with_settings(self, override: dict[str, Any]) -> DistillJob:
        """The same job with ``override`` over its training settings (one phase's own `training`)."""
        return dataclasses.replace(self, settings={**self.settings, **override}) if override else self

    def identity(self, phase: int | None = None) -> dict[str, Any]:
        """Everything that determines this training (or one of its phases)."""
        data = self.data
        inputs = {
            "student": self.student_dir,
            "teacher": data.get("teacher"),
            "cache": data.get("cache"),
            "corpus": data.get("corpus") if self.stage == "stage1" else None,
            "task": data.get("task") if self.stage == "stage2" else None,
        }
        for i, folder in enumerate(data.get("teachers") or [], 1):  # a multi-teacher stage 2: every teacher
            inputs[f"teacher{i}"] = folder
        return job_identity(
            inputs,
            job=f"distill_{self.stage}",
            phase=phase,
            recipe=self.run,
            settings=self.settings,
            deepspeed=self.deepspeed,
            seed=self.seed,
        )
