"""Two local CPU processes (jax.distributed, gloo) train like one process on the same batch."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from async_grpo import distributed
from async_grpo import metrics as metrics_lib
from tests import helpers
from tests.helpers import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARES, STEPS = 2, 3

# Each process generates its share of every step's prompts (split by process index, its own
# sampling key) with θ_0, the learner assembles the global batch on the data axis and takes
# STEPS donated updates. One process builds the same global batch from both shares itself.
WORKER = """
import sys
import jax
jax.config.update("jax_platforms", "cpu")
from async_grpo import distributed
distributed.initialize()
import numpy as np, optax
from async_grpo import losses, models, sharding as sharding_lib
from async_grpo.rl.learner import Learner
from async_grpo.rl.objectives import GRPOObjective
from async_grpo.rl.rollout import Rollouts
from async_grpo.tasks import CharTokenizer, get_task

shares, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tok = CharTokenizer()
graphdef, params0 = models.init_model(
    models.get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=24), 0)
task = get_task("addition", num_digits=2)
task.score_batch = lambda problems, responses: (
    np.asarray([r.count("1") / max(len(r), 1) for r in responses], np.float32), {
        "correct_frac": 0.0, "malformed_frac": 0.0})
ro = Rollouts(graphdef, task, tok, group_size=4, max_prompt_len=7, max_new_tokens=5)
mesh = sharding_lib.make_mesh([("data", -1)])
objective = GRPOObjective(graphdef, losses.make_loss("grpo", kl_coef=0.0),
                          losses.make_loss("total_derivative"), 0.0, 4, 1.0)
L = Learner(objective, optax.adam(3e-3), params0, mesh=mesh)
params = L.place_params(params0)
opt_state, aux = L.init_opt_state(params), L.init_aux(params)
behavior = L.snapshot(params)   # process-local θ_0 for the generator
mine = [jax.process_index()] if jax.process_count() > 1 else range(shares)
for t in range(steps):
    problems = task.sample_batch(np.random.default_rng([0, t]), 4 * shares)
    parts = []
    for i in mine:
        share = distributed.process_share(problems, i, shares)
        key = jax.random.fold_in(jax.random.key(t), i)
        parts.append(ro.generate_batch(behavior, 0, key, share).arrays)
    local = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    params, opt_state, aux, m = L.step(params, opt_state, aux, local, step=t + 1)
    print("step", t, "loss", float(m["loss"]), "grad_norm", float(m["grad_norm"]), flush=True)
final = jax.tree.map(np.asarray, distributed.to_local(params))
moved = max(float(np.abs(a - np.asarray(b)).max())
            for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(params0)))
if jax.process_index() == 0:
    np.savez(out, *jax.tree.leaves(final))
print("moved", moved, flush=True)
print("processes", jax.process_count(), "devices", len(jax.devices()), "DONE", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(out, env_extra):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **env_extra)
    for k in ("ASYNC_GRPO_COORDINATOR", "ASYNC_GRPO_NUM_PROCESSES", "ASYNC_GRPO_PROCESS_ID"):
        if k not in env_extra:
            env.pop(k, None)
    return subprocess.Popen([sys.executable, "-c", WORKER, str(SHARES), str(STEPS), out],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait(proc):
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    return out


@pytest.mark.multidevice
@pytest.mark.slow  # ~25 s idle: two jax.distributed processes
def test_two_processes_match_one(tmp_path):
    port = _free_port()
    procs = [_launch(str(tmp_path / f"two_{i}.npz"), {
        "ASYNC_GRPO_COORDINATOR": f"localhost:{port}", "ASYNC_GRPO_NUM_PROCESSES": "2",
        "ASYNC_GRPO_PROCESS_ID": str(i)}) for i in range(2)]
    one = _wait(_launch(str(tmp_path / "one.npz"), {}))
    outs = [_wait(p) for p in procs]
    assert "processes 1 devices 1 DONE" in one
    assert all("processes 2 devices 2 DONE" in o for o in outs), outs
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two_0.npz")
    assert len(a.files) == len(b.files) > 0
    # Adam normalises each coordinate, so all-reduce rounding differences in tiny gradients
    # show up at ~1e-6 after a few steps; the updates themselves are ~1e-2.
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=2e-5)
    moved = float(one.split("moved ")[1].split()[0])
    assert moved > 1e-3, moved


def test_initialize_is_a_noop_for_one_process(monkeypatch):
    for k in ("ASYNC_GRPO_NUM_PROCESSES", "JAX_NUM_PROCESSES"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    with pytest.raises(ValueError, match="needs the coordinator address"):
        distributed.initialize(num_processes=2)
    with pytest.raises(ValueError, match=r"process_id=3 is not in \[0, 2\)"):
        distributed.initialize("localhost:1", 2, 3)


def test_process_slot_reads_the_environment_without_starting_jax_distributed(monkeypatch):
    for k in ("ASYNC_GRPO_NUM_PROCESSES", "JAX_NUM_PROCESSES", "ASYNC_GRPO_PROCESS_ID",
              "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.process_slot() == (0, 1)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    with pytest.raises(ValueError, match="no process id"):
        distributed.process_slot()
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.process_slot() == (3, 4)
    monkeypatch.setenv("ASYNC_GRPO_PROCESS_ID", "1")            # ours win over JAX's
    assert distributed.process_slot() == (1, 4)


def test_process_share():
    items = list(range(8))
    assert distributed.process_share(items, 0, 2) == [0, 1, 2, 3]
    assert distributed.process_share(items, 1, 2) == [4, 5, 6, 7]
    assert distributed.process_share(items) == items
    with pytest.raises(ValueError, match="do not split evenly over 3 processes"):
        distributed.process_share(items, 0, 3)


@pytest.mark.slow      # ~100 s; test_two_processes_match_one covers the 2-process learner
@pytest.mark.multidevice
def test_train_binary_two_processes(tmp_path):
    """experiments.train in 2 processes (fixed S=2): each generates its half of the prompts; the
    run logs exact lags from process 0, checkpoints (snapshots included) and resumes."""
    init, workdir = helpers.random_init(tmp_path / "init"), str(tmp_path / "run")

    def run(steps):
        port = _free_port()
        args = [f"--config.{k}={v}" for k, v in TINY.items()] + [
            f"--config.init_from={init}", "--config.staleness.policy=fixed",
            "--config.staleness.max_lag=2", "--config.staleness.queue_size=2",
            f"--config.rl.steps={steps}", "--config.rl.eval_every=0",
            "--config.rl.checkpoint_every=2", f"--workdir={workdir}",
            f"--coordinator_address=localhost:{port}", "--num_processes=2",
            "--allow_changed=rl.steps"]
        env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
        procs = [subprocess.Popen([sys.executable, "-m", "experiments.train",
                                   "--config=experiments/configs/addition.py", *args,
                                   f"--process_id={i}"], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        for p in procs:
            _wait(p)

    run(3)
    run(4)   # resumes from step 3 (history snapshots restored on both processes)
    recs = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["lag"] for r in recs] == [0, 1, 2, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in recs)
    other = metrics_lib.read_metrics(os.path.join(workdir, "process_1"))
    assert [r["step"] for r in other] == [1, 2, 3, 4]
    assert [r["loss"] for r in other] == [r["loss"] for r in recs]   # one global update
    # Rollout statistics are global means of the two shares, the same in both streams.
    for r0, r1 in zip(recs, other):
        for key in ("reward", "response_length", "truncated_frac"):
            assert r0[f"rollout/{key}"] == r1[f"rollout/{key}"]
            mean = (r0[f"rollout_local/{key}"] + r1[f"rollout_local/{key}"]) / 2
            assert abs(r0[f"rollout/{key}"] - mean) < 1e-5, (key, r0, r1)
    assert any(r0["rollout_local/response_length"] != r1["rollout_local/response_length"]
               for r0, r1 in zip(recs, other))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3", "4"]
