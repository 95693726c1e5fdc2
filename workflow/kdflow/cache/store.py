"""Sharded, resumable cache folders: shards written atomically, progress recorded after each shard,
``manifest.json`` (settings, fingerprints, per-shard checksums) written last."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import faults
from ..errors import DataError
from ..jsonio import read_json, write_json
from ..safeio import make_dirs
from .format import file_sha256, read_shard, write_shard

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
PROGRESS = "progress.json"


class ShardWriter:
    """Resumes from ``progress.json`` when its header (settings + fingerprints) equals this run's."""

    def __init__(self, out_dir: str | Path, header: dict[str, Any]) -> None:
        self.out_dir = make_dirs(out_dir)
        self.header = header
        self.written_now = 0
        self.shards: list[dict[str, Any]] = []
        progress = self.out_dir / PROGRESS
        if progress.exists():
            previous = read_json(progress)
            if previous.get("header") == header:
                self.shards = self._verified(previous["shards"])
                log.info("resuming %s after %d complete shard(s)", self.out_dir, len(self.shards))
            else:
                log.info("%s: settings or fingerprints changed, starting over", self.out_dir)
        keep = {s["file"] for s in self.shards}
        for stale in self.out_dir.glob("shard_*.npz"):
            if stale.name not in keep:
                stale.unlink()
        (self.out_dir / MANIFEST).unlink(missing_ok=True)

    def _verified(self, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        good = []
        for shard in shards:
            path = self.out_dir / shard["file"]
            if not path.exists() or file_sha256(path) != shard["sha256"]:
                log.warning("%s is missing or damaged: recomputing from there", path)
                break
            good.append(shard)
        return good

    def done(self, index: int) -> bool:
        return index < len(self.shards)

    def add(self, index: int, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
        if index != len(self.shards):
            raise RuntimeError(f"shard {index} written out of order (have {len(self.shards)})")
        name = f"shard_{index:05d}.npz"
        sha = write_shard(self.out_dir / name, arrays)
        self.shards.append({"file": name, "sha256": sha, **record})
        write_json(self.out_dir / PROGRESS, {"header": self.header, "shards": self.shards})
        self.written_now += 1
        faults.die_at("shard", self.written_now)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        manifest = {**self.header, "shards": self.shards, **summary}
        write_json(self.out_dir / MANIFEST, manifest)
        return manifest


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
            raise DataError(f"{self.dir}: logit cache was built from other inputs than this job's ({details}); "
                            "rebuild it (delete it and rerun, or `snakemake --forcerun cache_logits_*`)")  # fmt: skip

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
