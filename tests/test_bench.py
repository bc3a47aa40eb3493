"""Smoke test of the async-pipeline benchmark binary (so that it does not rot)."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow       # ~45 s; the pipeline it times is tested in tests/test_pipeline.py
def test_async_pipeline_bench_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.async_pipeline", "--blocks=1", "--skip=1",
         "--config.rl.steps=4", "--config.rl.prompts_per_step=4", "--config.rl.group_size=4",
         f"--json_out={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "pipeline S=0 overhead" in proc.stdout and "1 blocks of 4 steps" in proc.stdout
    rows = json.loads(out.read_text())["seconds_or_fraction"]
    for key in ("sampling + reward (alone)", "learner step (alone)", "pipeline S=0", "pipeline S=1"):
        assert len(rows[key]) == 1 and 0 < rows[key][0] < 60, (key, rows[key])
    overhead = rows["pipeline S=0 overhead"][0]
    assert math.isfinite(overhead) and overhead == rows["pipeline S=0"][0] / rows[
        "sum of parts"][0] - 1
