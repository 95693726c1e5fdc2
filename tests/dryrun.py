"""The job list of a `snakemake -n -p --forceall` dry run, in a stable text form: one block per job (rule,
wildcards, inputs, outputs, log, benchmark, threads, resources, shell command), sorted.
tests/fixtures/dryrun/ holds the list of every shipped config; regenerate it with
`python tests/dryrun.py` (only when a change of the DAG is meant)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "dryrun"
KEPT = ("wildcards", "input", "output", "log", "benchmark", "threads", "resources")


def configs() -> dict[str, Path]:
    """Every shipped config by fixture name: the default, the test configs and the experiments."""
    found = {"default": REPO / "config" / "config.yaml"}
    found.update({f"tests-{p.stem}": p for p in sorted((REPO / "tests" / "config").glob("*.yaml"))})
    found.update({f"experiments-{p.stem}": p for p in sorted((REPO / "config" / "experiments").glob("*.yaml"))})
    return found


def _job(block: str) -> str:
    """One job block without what changes from run to run (job ids, dates, reasons, tmpdir)."""
    rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
    lines = [f"rule {rule}"]
    for line in block.splitlines()[1:]:
        key, _, value = line.strip().partition(": ")
        if key in KEPT:
            value = re.sub(r"tmpdir=[^,]*(, )?", "", value) if key == "resources" else value
            lines.append(f"  {key}: {value}")
        elif key == "Shell command":
            lines.append(f"  shell: {value}")
    return "\n".join(lines)


def parse(out: str) -> str:
    """The dry run's jobs, one block each, sorted."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", re.sub(r"\n\[[^\]\n]+\]\n", "\n", out))
    jobs = sorted(_job(b) for b in blocks if re.match(r"(?:local)?rule \w+:", b))
    return "\n\n".join(jobs) + "\n"


def job_list(configfile: Path, env: dict[str, str] | None = None) -> str:
    """The sorted job list of ``configfile``, dry-run in a temporary folder holding a link to tests/, beside
    a link to ../shared (configs read tests/fixtures/... and ../shared/data relative to the working folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        (Path(tmp) / "shared").symlink_to(REPO.parent / "shared")
        (work / "tests").symlink_to(REPO / "tests")  # the test configs read tests/fixtures/...
        cmd = [
            "snakemake",
            "-n",
            "-p",
            "--forceall",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(work),
            "--configfile",
            str(configfile),
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return parse(proc.stdout)


def main(names: list[str]) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, path in configs().items():
        if not names or name in names:
            (FIXTURES / f"{name}.txt").write_text(job_list(path, env))
            print(f"wrote {FIXTURES / name}.txt")


if __name__ == "__main__":
    main(sys.argv[1:])
