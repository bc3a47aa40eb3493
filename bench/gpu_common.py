"""What the GPU scripts share: run a part in its own process under a deadline, read its last
JSON line, print table rows as they come, write JSON atomically after each part.

Only the standard library at import (the drivers must not start JAX: a JAX process takes the
GPU's memory pool, which the parts run in their own processes need)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The exit code of a script that refuses to run its full shapes off a GPU.
NOT_ON_GPU = 3


class Deadline:
    """A total budget in seconds, shared by the parts of a run."""

    def __init__(self, budget_s: float):
        if not budget_s > 0:
            raise ValueError(f"budget_s={budget_s!r}: must be > 0 seconds")
        self.budget_s = float(budget_s)
        self.t0 = time.monotonic()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def timeout(self, part_s: float) -> float:
        """A part's timeout: its own budget, cut to what is left of the total."""
        return max(0.0, min(part_s, self.left()))


def run_part(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[dict, str]:
    """Runs `cmd` in the repository root for at most `timeout` s; -> (its last JSON line, or
    {"error": ...}, with "part_wall_s" added: the part's wall time; the output's tail). A part
    that is cut off still returns what it printed."""
    t0 = time.monotonic()
    if timeout <= 0:
        return {"error": "skipped: no budget left", "part_wall_s": 0.0}, ""
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    pythonpath = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = ROOT + (os.pathsep + pythonpath if pythonpath else "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=env)
        stdout, out, rc = proc.stdout, proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        return ({"error": f"timed out after {timeout:.0f} s",
                 "part_wall_s": time.monotonic() - t0},
                (text(e.stdout) + text(e.stderr))[-3000:])
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except json.JSONDecodeError:
                break
            res["part_wall_s"] = time.monotonic() - t0
            if rc:
                res.setdefault("exit_code", rc)
            return res, out[-3000:]
    return {"error": f"exit {rc}: {' '.join(out.strip().split())[-400:]}",
            "part_wall_s": time.monotonic() - t0, "exit_code": rc}, out[-3000:]


def write_json(path: str, obj) -> None:
    """Atomic JSON write (a cut-off run leaves the previous complete file, never half of one)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def say(line: str = "") -> None:
    print(line, flush=True)


def python() -> str:
    """The interpreter of the parts: this one (`python3` when the drivers are run as such)."""
    return sys.executable or "python3"
