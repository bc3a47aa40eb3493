"""Metrics: JSON lines + TensorBoard event files, and a progress line with steps/s and ETA.

`MetricsWriter(workdir)` appends one JSON object per `write(step, metrics)` call to
`<workdir>/metrics.jsonl` (keys: "step", "time" (seconds since the writer opened) and the metric
names) and writes the same scalars to TensorBoard event files under `<workdir>/tb/` through
tensorboardX, one `Summary` event per step holding every scalar (one event per scalar, as
`SummaryWriter.add_scalar` writes them, costs ~40 µs each: 2.9 ms for 70 scalars, against 0.16 ms
batched). tensorboardX is imported only when TensorBoard events are asked for
(`tensorboard=True`, the runs' `diagnostics.tensorboard`). Values must be scalars (python numbers, numpy/JAX 0-d arrays); non-finite values are
written as JSON `NaN`/`Infinity` like the `json` module does, never dropped.

The event file is written synchronously (tensorboardX's `EventsWriter`, not its `FileWriter`):
the `FileWriter` hands events to a background thread through a queue, and its `flush()` does not
drain that queue, so "flush before a checkpoint" could leave the last steps unwritten and a
killed, resumed run would miss them for good (seen in tests/test_run_hygiene.py). `flush()` here
puts every written step on disk; between flushes the file is flushed every `TB_FLUSH_SECS`.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from async_grpo import files

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
TB_FLUSH_SECS = 10.0


def _scalar(v: Any) -> float | int | bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"metric value must be a scalar, got shape {a.shape}")
    x = a.reshape(()).item()
    return x if isinstance(x, (int, bool)) else float(x)


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float | int | bool]:
    """Fetches (device) scalars to host python numbers, one transfer for the whole dict."""
    import jax  # local: keeps this module importable without initializing JAX
    host = jax.device_get(dict(metrics))
    return {k: _scalar(v) for k, v in host.items()}


class MetricsWriter:
    """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tb`)."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, prefix: str = "",
                 purge_step: int | None = None):
        """`purge_step` (a resumed run: the first step it will write again) hides every earlier
        TensorBoard event at that step or later, as TensorBoard's own purge does, so a killed
        and resumed run shows each step once."""
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, METRICS_FILE)
        self.prefix = prefix
        self._file = open(self.path, "a", encoding="utf-8")
        self._t0 = time.time()
        self._tb = None
        if tensorboard:
            # pylint: disable=import-outside-toplevel
            try:
                from tensorboardX.event_file_writer import EventsWriter
                from tensorboardX.proto import event_pb2, summary_pb2
            except ImportError as e:
                raise ImportError(
                    f"TensorBoard logging needs tensorboardX ({e}); install it (pip install "
                    "tensorboardX) or switch it off (diagnostics.tensorboard=false, "
                    "MetricsWriter(tensorboard=False)).") from e
            os.makedirs(os.path.join(workdir, TB_DIR), exist_ok=True)
            # The pid in the name: two writers opened in the same second get two files.
            self._tb = EventsWriter(os.path.join(workdir, TB_DIR, "events"), f".{os.getpid()}")
            self._event, self._summary = event_pb2.Event, summary_pb2.Summary
            if purge_step is not None:
                self._tb.write_event(event_pb2.Event(
                    wall_time=time.time(), step=int(purge_step),
                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
            self._tb.flush()
            self._tb_flushed = time.time()

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        scalars = to_scalars(metrics)
        rec = {"step": int(step), "time": round(time.time() - self._t0, 3)}
        rec.update({self.prefix + k: v for k, v in scalars.items()})
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            summary = self._summary
            values = [summary.Value(tag=self.prefix + k, simple_value=float(v))
                      for k, v in scalars.items()]
            self._tb.write_event(self._event(wall_time=time.time(), step=int(step),
                                             summary=summary(value=values)))
            if time.time() - self._tb_flushed > TB_FLUSH_SECS:
                self.flush()
        return rec

    def flush(self):
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()
            self._tb_flushed = time.time()

    def close(self):
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def truncate_after(workdir: str, step: int) -> None:
    """Drops the records past `step` from `<workdir>/metrics.jsonl` (a resumed run recomputes
    them), atomically."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
        files.write_text_atomic(path, "".join(kept))


def read_tensorboard(logdir: str) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the event files under `logdir`, oldest file first,
    with TensorBoard's purge applied: a SessionLog START at step s (written by a resumed
    `MetricsWriter`) hides the earlier files' events at steps >= s."""
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    out: list[tuple[int, str, float]] = []
    paths = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    for path in sorted(paths, key=lambda p: (os.path.basename(p).split(".")[3], p)):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):   # record: u64 length, u32 crc, payload, u32 crc
            n = int.from_bytes(data[pos:pos + 8], "little")
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            if event.HasField("session_log") and \
                    event.session_log.status == event_pb2.SessionLog.START:
                out = [e for e in out if e[0] < event.step]
            out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return out


def read_metrics(workdir_or_file: str) -> list[dict[str, Any]]:
    """Reads back a metrics.jsonl (path to the file or to its workdir)."""
    path = workdir_or_file
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Progress line "step 120/500 (24%) | 3.1 steps/s | ETA 2m03s | reward 0.41 ...".

    Steps/s is measured over the steps since `start_step` (excluding the first `warmup` steps,
    which include compilation) so it is an honest throughput figure.
    """

    def __init__(self, total_steps: int, start_step: int = 0, *, warmup: int = 1):
        self.total = int(total_steps)
        self.start = int(start_step)
        self.warmup = warmup
        self._t_start = time.time()
        self._t_warm = None
        self._warm_step = None

    def steps_per_sec(self, step: int) -> float:
        now = time.time()
        if self._t_warm is None:
            if step - self.start >= self.warmup:
                self._t_warm, self._warm_step = now, step
            done = step - self.start
            dt = now - self._t_start
            return done / dt if dt > 0 and done > 0 else float("nan")
        done = step - self._warm_step
        dt = now - self._t_warm
        if done <= 0 or dt <= 0:
            done, dt = step - self.start, now - self._t_start
        return done / dt if dt > 0 and done > 0 else float("nan")

    def line(self, step: int, metrics: Mapping[str, Any] | None = None,
             keys: tuple[str, ...] | None = None) -> str:
        """`step` = number of steps completed."""
        sps = self.steps_per_sec(step)
        eta = (self.total - step) / sps if sps and math.isfinite(sps) and sps > 0 else float("nan")
        pct = 100.0 * step / self.total if self.total else 100.0
        parts = [f"step {step}/{self.total} ({pct:.0f}%)", f"{sps:.2f} steps/s",
                 f"elapsed {format_duration(time.time() - self._t_start)}",
                 f"ETA {format_duration(eta)}"]
        if metrics:
            for k in (keys or tuple(metrics)):
                if k in metrics:
                    v = metrics[k]
                    parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
        return " | ".join(parts)
