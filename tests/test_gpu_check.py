"""The GPU check's path (`gpu/check.sh`, `bench/gpu_check.py`) and the GPU machine's software:
no ml_collections and no tensorboardX on the path the GPU scripts take."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import repo_root

REPO = repo_root()

# Runs `code` in a fresh interpreter in which ml_collections and tensorboardX cannot be imported
# (as on the GPU machine's image, which has neither).
_BLOCKED = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ml_collections", "tensorboardX"):
            raise ImportError(f"{name} is blocked (not on the GPU machine)")
sys.meta_path.insert(0, _Block())
"""


def _run_blocked(code: str, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", _BLOCKED + code, str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_gpu_path_imports_and_runs_without_ml_collections_and_tensorboardx(tmp_path):
    proc = _run_blocked("""
import dataclasses, sys
from async_grpo import config as config_lib, metrics, models, sampling
from async_grpo.rl import components, learner, pipeline, population
import bench.decode_gpu, bench.gpu_common, bench.gpu_check
from experiments.configs import sweep_lm
for name in ("ml_collections", "tensorboardX"):
    assert name not in sys.modules, name
rc = config_lib.RunConfig.from_config(sweep_lm.run_dict())
assert rc.model.preset == "tiny" and rc.rl.steps == 200 and rc.collapse.warmup == 20
with metrics.MetricsWriter(sys.argv[1], tensorboard=False) as w:
    w.write(1, {"loss": 1.0})
try:
    metrics.MetricsWriter(sys.argv[1] + "/tb", tensorboard=True)
except ImportError as e:
    assert "diagnostics.tensorboard=false" in str(e), e
else:
    raise AssertionError("tensorboard=True without tensorboardX must fail")
try:
    config_lib.default_config_dict()
except ImportError as e:
    assert "blocked" in str(e)
else:
    raise AssertionError("ConfigDicts need ml_collections")
print("OK")
""", tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), \
        proc.stdout[-2000:] + proc.stderr[-3000:]


def test_check_refuses_off_a_gpu_and_needs_an_outdir(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", "gpu/check.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage: bash gpu/check.sh OUTDIR" in proc.stderr
    # From another directory, with a relative OUTDIR: the check changes to the repository root
    # itself and writes into OUTDIR as given from where it was called.
    proc = subprocess.run(["bash", os.path.join(REPO, "gpu", "check.sh"), "out"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "not on a GPU (jax backend 'cpu')" in proc.stdout and "--tiny" in proc.stdout
    rec = json.loads((tmp_path / "out" / "check.json").read_text())
    assert rec["refused"] == "backend 'cpu'" and rec["parts"] == {}


def _check_tiny(python_dir, out):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PATH=python_dir + os.pathsep + os.environ["PATH"])
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", "gpu/check.sh", str(out), "--tiny"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((out / "check.json").read_text())
    assert list(rec["parts"]) == ["learner", "decode", "memory", "lm_grid"]
    assert all(p["ok"] for p in rec["parts"].values()), rec["parts"]
    for name in ("gpu_learner.json", "decode.json", "memory_plan.json", "lm_grid.json"):
        assert (out / name).exists(), name
    learner = json.loads((out / "gpu_learner.json").read_text())
    ours = [r for n, r in learner["rows"].items() if n.startswith("ours")]
    assert len(ours) == 2 and all(r["finite"] and r["metrics"] > 5 for r in ours)
    decode = json.loads((out / "decode.json").read_text())
    assert [r["resolved"].split(" (")[0] for r in decode["rows"]] == ["pallas", "reduce"]
    for row in ("| learner |", "| decode |", "| memory |", "| lm_grid |"):
        assert row in proc.stdout
    return proc.stdout


@pytest.mark.slow       # ~10 min on 2 busy cores: every part of the check at toy shapes
def test_check_tiny_runs_every_part(tmp_path):
    print(_check_tiny(os.path.dirname(sys.executable), tmp_path / "out"))


VENV312 = os.path.join(REPO, ".venv312", "bin")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(VENV312, "python3")),
                    reason="no .venv312 (the GPU machine's stack; docs/benchmarks.md says how "
                           "to make it)")
def test_check_tiny_on_the_gpu_machines_stack(tmp_path):
    """Python 3.12 without ml_collections and tensorboardX, as on the GPU machine."""
    for name in ("ml_collections", "tensorboardX"):
        proc = subprocess.run([os.path.join(VENV312, "python3"), "-c", f"import {name}"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0, f"{name} is installed in .venv312"
    print(_check_tiny(VENV312, tmp_path / "out"))


def test_prompt_width_is_a_multiple_of_64_under_cudnn():
    import dataclasses  # pylint: disable=import-outside-toplevel
    from async_grpo import models  # pylint: disable=import-outside-toplevel
    from async_grpo.rl import components  # pylint: disable=import-outside-toplevel
    cfg = models.get_config("tiny", attention_impl="cudnn", max_seq_len=1024)
    assert components.prompt_width(131, 512, cfg) == 192
    assert components.prompt_width(128, 512, cfg) == 128
    assert components.prompt_width(131, 512, dataclasses.replace(cfg, max_seq_len=650)) == 138
    assert components.prompt_width(131, 512, dataclasses.replace(cfg, attention_impl="xla")) == 131
