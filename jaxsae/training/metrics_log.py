"""The metrics log of a run: ``metrics.jsonl``, one JSON object per logged step.

Each record holds ``step`` and scalar metrics (``loss``, ``mse``, ``l0``, ``fvu``, ``dead_frac``,
``tokens_per_s``, ``lr``, ``l1_coeff``, ...). Records are appended and flushed one line at a
time, so a crash loses at most the line being written. When a run resumes from the checkpoint at
step ``s``, the records after ``s`` (written after that checkpoint by the interrupted run) are
dropped first, so the log reads like the log of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from jaxsae.data.store import atomic_save_text

__all__ = ["MetricsLog", "read_metrics"]


def _clean(value: Any) -> Any:
    """A JSON-friendly scalar: Python numbers, ``None`` for NaN/inf (JSON has neither)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a torn last line is ignored)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricsLog:
    """Append-only JSON-lines log of training metrics.

    Args:
      path: the ``metrics.jsonl`` file.
      resume_step: if given, keep only the existing records with ``step <= resume_step``
        (rewritten atomically); if ``None``, start a fresh file.
      write_file: ``False`` keeps the file as it is and only returns the records (the
        processes of a run other than process 0).

    Example:
      >>> log = MetricsLog(out_dir / "metrics.jsonl")
      >>> log.write(step=10, loss=1.5, l0=12.0)
      >>> log.close()
    """

    def __init__(
        self, path: str | os.PathLike, *, resume_step: int | None = None, write_file: bool = True
    ):
        self.path = Path(path)
        self._file: Any = None
        if not write_file:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            kept: list[dict] = []
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        atomic_save_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, **record: Any) -> dict:
        """Append one record (values converted to JSON scalars) and flush it; return it."""
        clean = {k: _clean(v) for k, v in record.items()}
        if self._file is not None:
            self._file.write(json.dumps(clean) + "\n")
            self._file.flush()
        return clean

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
