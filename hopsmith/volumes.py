"""The volume path contract (volumes.md explains it; this module is the one place that builds the paths).

In the cloud each volume is mounted at `/vol/<name>`; locally the same tree lives under a directory
(`$HOPSMITH_VOLUMES`, or whatever `Layout(base)` is given), so a stage reads and writes the same
relative paths in both places.

    traces   /vol/traces/<run>/traces/shard-<i>.jsonl, judged/shard-<i>.jsonl, kept.jsonl, train.jsonl
    adapters /vol/adapters/<run>/<stage>/            (sft, simpo: adapter, training.json, checkpoints/)
    runs     /vol/runs/<run>/<eval>/results/shard-<i>.jsonl, results.jsonl, metrics.json, config.json,
             /vol/runs/<run>/cost.json
    models   /vol/models/                            (HF_HOME and the embedded model's converted copy)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

VOLUMES = {"traces": "hopsmith-traces", "adapters": "hopsmith-adapters", "runs": "hopsmith-runs",
           "models": "hopsmith-models"}
MOUNT = "/vol"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class LayoutError(ValueError):
    pass


def check_run_name(run: str) -> str:
    """Run names become directory names on shared volumes: no slashes, no dot-dot, no spaces."""
    if not isinstance(run, str) or not _RUN_NAME.match(run) or ".." in run:
        raise LayoutError(f"run name {run!r} must be 1-100 letters, digits, '.', '_' or '-' (it names volume folders)")
    return run


@dataclass(frozen=True)
class Layout:
    base: Path

    @classmethod
    def from_env(cls) -> "Layout":
        return cls(Path(os.environ.get("HOPSMITH_VOLUMES", MOUNT)))

    def volume(self, name: str) -> Path:
        if name not in VOLUMES:
            raise LayoutError(f"unknown volume {name!r}; known: {', '.join(VOLUMES)}")
        return self.base / name

    def traces(self, run: str) -> Path:
        """Root of the traces and judge stages of a run (they write traces/, judged/, kept.jsonl)."""
        return self.volume("traces") / check_run_name(run)

    def adapter(self, run: str, stage: str = "sft") -> Path:
        return self.volume("adapters") / check_run_name(run) / stage

    def run(self, run: str) -> Path:
        return self.volume("runs") / check_run_name(run)

    def eval(self, run: str, name: str) -> Path:
        return self.run(run) / check_run_name(name)

    def cost(self, run: str) -> Path:
        return self.run(run) / "cost.json"

    def models(self) -> Path:
        return self.volume("models")
