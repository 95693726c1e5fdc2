"""Sharded, resumable cache folders, written by one or several processes: each shard is written atomically
with a record beside it (``shard_NNNNN.json``: its checksum and the header it was built under), and the main
process writes ``manifest.json`` (settings, fingerprints, every shard's record) last."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .. import faults
from ..errors import DataError
from ..jsonio import read_json, write_json
from ..safeio import make_dirs
from .format import file_sha256, read_shard, write_shard

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
SHARD = re.compile(r"shard_(\d{5})\.(npz|json)$")


class _Background:
    """One thread running jobs in order, at most ``depth`` waiting: the caller computes the next shard while the
    last one is written. The first failure stops the jobs after it and is raised in the caller by the next
    ``submit`` or ``drain`` (and by every one after it)."""

    def __init__(self, depth: int) -> None:
        self.jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kdflow-shard-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                if self.error is None:
                    job()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises it
                self.error = exc
            finally:
                self.jobs.task_done()

    def _raise(self) -> None:
        if self.error is not None:  # kept: every later submit or drain raises it again, nothing is lost silently
            raise self.error

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        self.jobs.put(job)

    def drain(self) -> None:
        """Wait until every submitted job ran; raise the first failure."""
        self.jobs.join()
        self._raise()

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()


class ShardWriter:
    """Process ``rank`` of ``size`` writes the shards it owns (index % size == rank). A shard whose record
    carries this run's header (settings + fingerprints) and whose file has the recorded checksum is kept on
    a rerun: a killed job resumes shard by shard. Shards are written by a background thread (one shard waits
    at most) while the next is computed; use the writer as a context manager so that it stops."""

    def __init__(self, out_dir: str | Path, header: dict[str, Any], rank: int = 0, size: int = 1) -> None:
        self.out_dir = make_dirs(out_dir)
        self.header = header
        self.header_sha = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()
        self.rank, self.size = rank, size
        self.written_now = 0
        self._background = _Background(depth=1)
        if rank == 0:
            (self.out_dir / MANIFEST).unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Write what was handed over (complete shards are kept for a resume) and stop the thread; a writing
        failure is raised unless another exception is already on its way."""
        try:
            self._background.drain()
        except Exception as failure:
            if kind is None:
                raise
            if failure is not exc:
                log.exception("%s: writing a shard failed too", self.out_dir)
        finally:
            self._background.close()

    def _name(self, index: int) -> str:
        return f"shard_{index:05d}"

    def record(self, index: int) -> dict[str, Any] | None:
        """The record of shard ``index`` when it is complete and was built under this header, else None."""
        path = self.out_dir / f"{self._name(index)}.json"
        if not path.exists():
            return None
        record = read_json(path)
        shard = self.out_dir / record.get("file", "")
        if record.get("header_sha256") != self.header_sha or not shard.is_file():
            return None
        if file_sha256(shard) != record.get("sha256"):
            log.warning("%s is damaged: computing it again", shard)
            return None
        return record

    def skip(self, index: int) -> bool:
        """Whether this process leaves shard ``index`` alone: another process owns it, or it is complete."""
        if index % self.size != self.rank:
            return True
        if self.record(index) is not None:
            log.info("resuming %s: shard %d is complete", self.out_dir, index)
            return True
        return False

    def add(self, index: int, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
        """Hand shard ``index`` to the writing thread (``arrays`` must not change afterwards); raises the
        failure of an earlier shard's writing."""
        self._background.submit(lambda: self._write(index, arrays, record))

    def _write(self, index: int, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
        name = self._name(index)
        sha = write_shard(self.out_dir / f"{name}.npz", arrays)
        write_json(
            self.out_dir / f"{name}.json",
            {"file": f"{name}.npz", "sha256": sha, "header_sha256": self.header_sha, **record},
        )
        self.written_now += 1
        faults.die_at("shard", self.written_now)

    def finish(self, n_shards: int, summary: dict[str, Any], runtime: Any) -> dict[str, Any]:
        """After every process wrote its shards, the main one checks all ``n_shards`` records, removes
        leftovers of other runs and writes the manifest; every process returns it."""
        self._background.drain()
        runtime.barrier()
        if self.rank == 0:
            shards = []
            for index in range(n_shards):
                record = self.record(index)
                if record is None:
                    raise DataError(f"{self.out_dir}: shard {index} is missing after every process finished")
                shards.append({k: v for k, v in record.items() if k != "header_sha256"})
            self._remove_leftovers(n_shards)
            positions = sum(s["positions"] for s in shards)
            size = sum((self.out_dir / s["file"]).stat().st_size for s in shards)
            write_json(
                self.out_dir / MANIFEST,
                {
                    **self.header,
                    "shards": shards,
                    "positions": positions,
                    "bytes": size,
                    "bytes_per_position": size / positions if positions else None,
                    "processes": self.size,
                    **summary,
                },
            )
        runtime.barrier()
        return read_json(self.out_dir / MANIFEST)

    def _remove_leftovers(self, n_shards: int) -> None:
        for path in self.out_dir.iterdir():
            match = SHARD.match(path.name)
            if match and int(match.group(1)) >= n_shards:
                path.unlink()
        (self.out_dir / "progress.json").unlink(missing_ok=True)  # the single-writer format before records


class ShardReader:
    """Reads a finished cache; checks each shard's checksum the first time it is opened."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        path = self.dir / MANIFEST
        if not path.exists():
            raise DataError(f"{path}: cache has no manifest (not finished?)")
        self.manifest = read_json(path)
        self._checked: set[int] = set()
        self._index = -1
        self._arrays: dict[str, np.ndarray] = {}

    def check_fingerprints(self, expected: dict[str, str | None]) -> None:
        """Refuse a cache built for other data / vocabulary / tokenizer / teacher."""
        have = self.manifest.get("fingerprints", {})
        wrong = [k for k, v in expected.items() if have.get(k) != v]
        if wrong:
            details = ", ".join(f"{k}: cache {str(have.get(k))[:12]} != now {str(expected[k])[:12]}" for k in wrong)
            raise DataError(
                f"{self.dir}: logit cache was built from other inputs than this job's ({details}); "
                "rebuild it (delete it and rerun, or `snakemake --forcerun cache_logits_*`)"
            )

    def shard(self, index: int) -> dict[str, np.ndarray]:
        if index != self._index:
            record = self.manifest["shards"][index]
            sha = None if index in self._checked else record["sha256"]
            self._arrays = read_shard(self.dir / record["file"], sha)
            self._checked.add(index)
            self._index = index
        return self._arrays

    def verify_all(self) -> None:
        for index in range(len(self.manifest["shards"])):
            self.shard(index)
