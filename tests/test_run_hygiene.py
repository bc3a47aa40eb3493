"""A workdir belongs to one run; SFT resumes bit-identically; bad workdirs fail fast."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from async_grpo import checkpoint as ckpt_lib
from async_grpo import metrics as metrics_lib
from async_grpo import workdir as workdir_lib
from tests import helpers
from tests.golden_runs import params_hash
from tests.helpers import TINY

REPO = helpers.repo_root()
CONFIG = "experiments/configs/addition.py"


def _cmd(module, workdir, *extra):
    return [sys.executable, "-m", module, f"--config={CONFIG}", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in TINY.items()], *extra]


def _run(module, workdir, *extra, check=True):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    t0 = time.time()
    proc = subprocess.run(_cmd(module, workdir, *extra), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, time.time() - t0


# --- the workdir's record ---------------------------------------------------------------------


def test_claim_refuses_a_different_config_naming_the_keys(tmp_path):
    wd = str(tmp_path / "run")
    cfg = {"rl": {"steps": 10, "optimizer": {"lr": 1e-4}}, "task": {"name": "addition"}}
    workdir_lib.claim(wd, "grpo", cfg)
    workdir_lib.claim(wd, "grpo", cfg)                       # the same run: fine
    other = {"rl": {"steps": 10, "optimizer": {"lr": 1e-2}}, "task": {"name": "multiplication"}}
    with pytest.raises(workdir_lib.WorkdirError,
                       match=r"rl.optimizer.lr: 0.0001 -> 0.01; task.name: 'addition' -> "
                             r"'multiplication'.*--allow_changed=rl.optimizer.lr,task.name"):
        workdir_lib.claim(wd, "grpo", other)
    longer = {"rl": {"steps": 20, "optimizer": {"lr": 1e-4}}, "task": {"name": "addition"}}
    with pytest.raises(workdir_lib.WorkdirError, match=r"rl.steps: 10 -> 20"):
        workdir_lib.claim(wd, "grpo", longer)
    record = workdir_lib.claim(wd, "grpo", longer, allow_changed=["rl.steps"])
    assert record["changes"][-1]["changed"] == {"rl.steps": [10, 20]}
    workdir_lib.claim(wd, "grpo", longer)                    # the record now holds 20
    with pytest.raises(workdir_lib.WorkdirError, match="holds a 'grpo' run, not 'sft'"):
        workdir_lib.claim(wd, "sft", longer)


def test_a_key_added_to_the_code_at_its_default_is_not_a_change(tmp_path):
    """A workdir recorded before a config key existed resumes when the key is at its default
    (the old code behaved as the default does), and is refused when it is not."""
    wd = str(tmp_path / "w")
    workdir_lib.claim(wd, "grpo", {"rl": {"steps": 10}})
    defaults = {"rl": {"steps": 5}, "task": {"path": ""}}
    workdir_lib.claim(wd, "grpo", {"rl": {"steps": 10}, "task": {"path": ""}}, defaults=defaults)
    with pytest.raises(workdir_lib.WorkdirError, match=r"task.path: '<absent>' -> 'x.jsonl'"):
        workdir_lib.claim(wd, "grpo", {"rl": {"steps": 10}, "task": {"path": "x.jsonl"}},
                          defaults=defaults)
    with pytest.raises(workdir_lib.WorkdirError, match=r"rl.steps: 10 -> 5"):   # present: a change
        workdir_lib.claim(wd, "grpo", {"rl": {"steps": 5}, "task": {"path": ""}},
                          defaults=defaults)


def test_bad_workdirs_are_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(workdir_lib.WorkdirError, match="is a file, not a directory"):
        workdir_lib.claim(str(a_file), "sft", {})
    with pytest.raises(workdir_lib.WorkdirError, match="cannot be written"):
        workdir_lib.claim("/proc/async_grpo_test/run", "sft", {})


@pytest.mark.slow  # ~25 s of subprocesses; workdir.claim's refusals are tested in-process above
def test_binaries_refuse_a_used_workdir_fast(tmp_path):
    """GRPO resumed with another lr or task, SFT rerun with more steps: refused in seconds with
    the differing keys named, nothing trained, nothing written."""
    init = helpers.random_init(tmp_path / "init")
    rl_dir, sft_dir = tmp_path / "grpo", tmp_path / "sft"
    _run("experiments.train", rl_dir, f"--config.init_from={init}", "--config.rl.eval_every=0")
    before = metrics_lib.read_metrics(str(rl_dir))
    for flag, key in (("--config.rl.optimizer.lr=0.01", "rl.optimizer.lr"),
                      ("--config.task.name=multiplication", "task.name")):
        proc, secs = _run("experiments.train", rl_dir, f"--config.init_from={init}",
                          "--config.rl.eval_every=0", flag, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert re.search(rf"different config \({re.escape(key)}: ", proc.stderr), proc.stderr
        assert secs < 30, secs
    assert metrics_lib.read_metrics(str(rl_dir)) == before
    _run("experiments.sft", sft_dir)
    proc, _ = _run("experiments.sft", sft_dir, "--config.sft.steps=20", check=False)
    assert proc.returncode != 0 and "sft.steps: 12 -> 20" in proc.stderr
    # The same SFT command again: already finished, returns at once, metrics not duplicated.
    recs = metrics_lib.read_metrics(str(sft_dir))
    proc, _ = _run("experiments.sft", sft_dir)
    assert "already finished" in proc.stderr and metrics_lib.read_metrics(str(sft_dir)) == recs
    assert sorted(os.listdir(sft_dir / "checkpoints")) == ["12"]


# --- SFT resume ---------------------------------------------------------------------------------

SFT_FLAGS = ("--config.sft.steps=16", "--config.sft.checkpoint_every=2",
             "--config.sft.eval_every=8", "--config.keep_checkpoints=2")


def _wait_for_step(proc, workdir, step, timeout=120):
    path = os.path.join(workdir, metrics_lib.METRICS_FILE)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        if os.path.exists(path) and any(r["step"] >= step for r in metrics_lib.read_metrics(path)):
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


@pytest.mark.slow  # ~20 s; resume without a kill: test_resume.py::test_bounded_async_resume_keeps_its_guarantees
def test_sft_sigkill_and_sigterm_resume_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    _run("experiments.sft", ref, *SFT_FLAGS)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    wd = tmp_path / "killed"
    ckpt_dir = str(wd / "checkpoints")
    start = lambda: subprocess.Popen(_cmd("experiments.sft", wd, *SFT_FLAGS), cwd=REPO,  # noqa
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
    proc = start()
    _wait_for_step(proc, str(wd), 5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    first = ckpt_lib.latest_step(ckpt_dir)
    assert first is not None and first < 16
    proc = start()
    _wait_for_step(proc, str(wd), first + 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "sft stopped at step" in err
    second = ckpt_lib.latest_step(ckpt_dir)
    assert first < second < 16
    _run("experiments.sft", wd, *SFT_FLAGS)
    assert params_hash(ckpt_dir) == params_hash(str(ref / "checkpoints"))
    recs, ref_recs = metrics_lib.read_metrics(str(wd)), metrics_lib.read_metrics(str(ref))
    assert [r["step"] for r in recs] == list(range(1, 17))
    assert [r["loss"] for r in recs] == [r["loss"] for r in ref_recs]
    assert recs[-1]["heldout/accuracy"] == ref_recs[-1]["heldout/accuracy"]
    steps = [s for s, tag, _ in metrics_lib.read_tensorboard(str(wd / "tb")) if tag == "loss"]
    assert steps == list(range(1, 17))      # TensorBoard too: each step once, in order
