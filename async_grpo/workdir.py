"""A workdir belongs to one run: its config is recorded on first use and checked on every resume.

`claim(workdir, kind, config, allow_changed=())` runs before anything heavy:

* the workdir must be a directory we can create and write (a clear error otherwise);
* the first call writes `<workdir>/run.json` (the run's kind, "sft" or "grpo", and its config);
* a later call with the same kind and config passes; a different kind, or any differing key not
  listed in `allow_changed`, is refused with a message that names every differing key with both
  values. Keys in `allow_changed` (e.g. ``rl.steps`` to extend a run) may differ; the record is
  then updated and the change appended to its history.

With several processes only process 0 writes the record; every process checks it.
"""

from __future__ import annotations

import json
import logging as logging_std
import os
import platform
import time
from typing import Any, Iterable, Mapping

from absl import logging
import jax

from async_grpo import files

RECORD = "run.json"


class WorkdirError(ValueError):
    """The workdir cannot be used for this run (the message says why and what to do)."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} for every key whose value differs (or is missing)."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)}


def machine() -> dict:
    """What the numbers of a run may depend on: the platform, the CPU model, the XLA flags (the
    CPU's instruction set changes float32 results; see docs/reproducibility.md)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def check_writable(workdir: str) -> None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir!r} is a file, not a directory; pass a directory.")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir!r} cannot be written ({e.strerror}); pass a "
                           "directory you can write to.") from None


def claim(workdir: str, kind: str, config: Mapping[str, Any],
          allow_changed: Iterable[str] = (), defaults: Mapping[str, Any] | None = None) -> dict:
    """Checks (and on first use records) that `workdir` holds this run; -> the record.

    `defaults` (the same nesting as `config`) are the current code's default values: a key the
    record lacks (added to the code after the run started) is not a change when its value is
    its default, since the code that started the run behaved as that default does."""
    check_writable(workdir)
    path = os.path.join(workdir, RECORD)
    config = json.loads(json.dumps(config))        # plain JSON values, as stored
    writer = jax.process_index() == 0
    if not os.path.exists(path):
        record = {"kind": kind, "config": config, "created": time.time(), "changes": [],
                  "machine": machine()}
        if writer:
            files.write_json_atomic(path, record)
        return record
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("kind") != kind:
        raise WorkdirError(f"--workdir={workdir!r} holds a {record.get('kind')!r} run, not "
                           f"{kind!r}; use another workdir.")
    changed = diff(record["config"], config)
    flat_defaults = _flatten(json.loads(json.dumps(defaults or {})))
    changed = {k: (a, b) for k, (a, b) in changed.items()
               if not (a == "<absent>" and k in flat_defaults and flat_defaults[k] == b)}
    allowed = set(allow_changed)
    refused = {k: v for k, v in changed.items() if k not in allowed}
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise WorkdirError(
            f"--workdir={workdir!r} holds a {kind} run with a different config ({listed}). Use a "
            f"new --workdir, or, if these keys may change on resume, pass "
            f"--allow_changed={','.join(refused)}.")
    if changed:
        record["changes"].append({"time": time.time(), "changed": {
            k: [a, b] for k, (a, b) in changed.items()}})
        record["config"] = config
        if writer:
            files.write_json_atomic(path, record)
    return record


class _DropOrbaxInfo(logging_std.Filter):
    def filter(self, record):
        return record.levelno > logging_std.INFO or "/orbax/" not in record.pathname


def quiet_orbax() -> None:
    """Orbax logs every save and restore step at INFO (half of a run's stderr); keep its
    warnings and errors only (the binaries call this once they have parsed their flags)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
        handler.addFilter(_DropOrbaxInfo())
