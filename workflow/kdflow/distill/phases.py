"""A stage's trainings: one, or one per phase (each from the previous phase's student, each resumable on its
own), and the merged log of a phased stage."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

from ..jsonio import read_json, write_json
from ..losses import build_losses
from ..plan.names import phase_training, stage_phases
from ..safeio import atomic_path
from ..train.workdir import IDENTITY
from .engine import train_phase
from .job import DistillJob


def run_job(job: DistillJob) -> dict[str, Any]:
    """Train ``job``'s stage. A stage with ``phases`` trains them one after the other, each for the stage's full
    schedule (its own optimizer, warm-up and decay; a phase's ``training`` overrides settings) from the previous
    phase's student, as GLMD's reference runs its two stage-2 fine-tunings. A finished phase's student is kept
    in ``work_dir/phaseN.student`` with the identity it was trained under, and reused on a rerun only under the
    same identity (so a changed setting retrains it); a finished stage leaves nothing."""
    phases, trainings = stage_phases(job.run[job.stage]), phase_training(job.run[job.stage])
    for spec in phases:
        build_losses(spec, job.stage)  # every phase's recipe is checked before the first one trains
    if len(phases) == 1:
        return train_phase(job.with_settings(trainings[0]), phases[0])
    current, metas = job.student_dir, []
    for i, spec in enumerate(phases, 1):
        last = i == len(phases)
        target = job.out_dir if last else job.work_dir / f"phase{i}.student"
        phase_job = job.with_folders(current, target, job.work_dir / f"phase{i}").with_settings(trainings[i - 1])
        identity, done = phase_job.identity(phase=i), target / IDENTITY
        if not last and done.exists() and read_json(done) == identity:
            metas.append(read_json(target / "kdflow.json"))
        else:
            metas.append(train_phase(phase_job, spec, phase=i))
            if job.runtime.ranks.main and not last:
                write_json(done, identity)
            job.runtime.barrier()  # helpers load the phase's student only once the main process wrote it
        current = target
    if not job.runtime.ranks.main:
        return {"stage": job.stage, "steps": sum(m["steps"] for m in metas)}
    logs = [job.work_dir / f"phase{i}.student" / "train_log.csv" for i in range(1, len(phases))]
    _merge_logs([*logs, job.out_dir / "train_log.csv"], job.out_dir / "train_log.csv")
    meta = {
        **metas[-1],
        "losses": phases,
        "phase_steps": [m["steps"] for m in metas],
        "steps": sum(m["steps"] for m in metas),
        "parent": str(job.student_dir),
    }
    write_json(job.out_dir / "kdflow.json", meta)
    shutil.rmtree(job.work_dir, ignore_errors=True)  # a finished stage is never resumed
    return meta


def _merge_logs(logs: list[Path], out: Path) -> None:
    """One CSV of every phase's steps (a ``phase`` column, steps numbered on across phases)."""
    rows, fields, offset = [], ["phase", "step"], 0
    for phase, log in enumerate(logs, 1):
        with open(log, newline="", encoding="utf-8") as fh:
            part = list(csv.DictReader(fh))
        for row in part:
            rows.append({**row, "phase": phase, "step": offset + int(row["step"])})
            fields += [k for k in row if k not in fields]
        offset += len(part)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval=0.0)
        writer.writeheader()
        writer.writerows(rows)
