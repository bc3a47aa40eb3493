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


def _bench(module, *flags):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow       # ~40 s: the GPU decode script's code path on a tiny CPU shape
def test_decode_gpu_bench_tiny_runs_every_implementation(tmp_path):
    out = _bench("bench.decode_gpu", "--tiny", f"--workdir={tmp_path}")
    r = json.loads((tmp_path / "decode.json").read_text())
    assert not r["failed"] and not r["skipped"] and r["bandwidth"] > 0
    assert [x["resolved"].split(" (")[0] for x in r["rows"]] == ["reduce", "reduce", "pallas"]
    # The sampler rounds the Pallas cache up to whole 128-slot blocks (so every P + N fits the
    # kernel), and with 8 rows × 2 KV heads the largest split whose parts hold ≥ 16 slots is 8
    # (no split reaches 512 programs at this toy shape).
    assert r["rows"][2]["resolved"] == "pallas (128 slots, 8 splits)"
    assert [x["cache_slots"] for x in r["rows"]] == [64, 64, 128]
    for x in r["rows"]:      # the floor counts the visible slots only, for every path
        assert x["visible_slots"] == 16 + 48 / 2
        assert x["bytes_per_step"]["total"] == x["bytes_per_step"]["weights"] + \
            x["bytes_per_step"]["cache"]
        assert math.isclose(x["floor_s"], x["bytes_per_step"]["total"] / r["bandwidth"])
    assert "fraction of floor" in out


def test_decode_bytes_per_step():
    from async_grpo import models  # pylint: disable=import-outside-toplevel
    from bench import decode_gpu  # pylint: disable=import-outside-toplevel
    cfg = models.get_config("llama3.2-1b", dtype="bfloat16")
    _, params = models.abstract_model(cfg)
    b = decode_gpu.bytes_per_step(cfg, params, rows=512, slots=512)
    assert b["weights"] == 2 * 1_235_814_400            # tied 1B, bf16
    assert b["cache"] == 2 * 16 * 512 * 8 * 512 * 64 * 2  # k and v, 16 layers: 8.6 GB
    assert b["total"] == b["weights"] + b["cache"]
    # The floor counts the slots a step can see: P + N/2 on average, not all P + N.
    assert decode_gpu.visible_slots(256, 256) == 384
    assert decode_gpu.bytes_per_step(cfg, params, rows=512, slots=384)["cache"] == \
        2 * 16 * 512 * 8 * 384 * 64 * 2


def test_decode_gpu_refuses_the_full_shapes_off_a_gpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "bench.decode_gpu", f"--workdir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "not on a GPU (jax backend 'cpu'" in proc.stdout and "--tiny" in proc.stdout


@pytest.mark.slow       # ~60 s
def test_logprob_parity_bench_writes_its_table(tmp_path):
    out = _bench("bench.logprob_parity", "--preset=tiny", f"--workdir={tmp_path}", "--steps=1",
                 "--prompts=4", "--group_size=2")
    r = json.loads((tmp_path / "parity.json").read_text())
    assert [(x["sampler"], x["learner"]) for x in r["rows"]] == [
        ("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32")]
    f32 = r["rows"][0]
    assert f32["max_abs"] <= 1e-5 and f32["tokens"] > 0
    assert r["rows"][1]["max_abs"] > f32["max_abs"]
    assert "| float32 | float32 |" in out
