"""The population runner: one compiled program per grid, the same algorithm as the pipeline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from async_grpo import checkpoint as ckpt_lib
from async_grpo import config as config_lib
from async_grpo import metrics as metrics_lib
from async_grpo.rl import components, pipeline, population
from tests import helpers
from tests._subprocess import run_at_production_codegen

STEPS = 24
GRID = {"rl.steps": STEPS, "rl.prompts_per_step": 8, "rl.group_size": 8, "rl.eval_every": 0,
        "rl.checkpoint_every": 0, "rl.optimizer.lr": 3e-3, "staleness.policy": "fixed",
        "staleness.max_lag": 2, "staleness.queue_size": 2}


@pytest.fixture(name="sft_dir", scope="module")
def _sft_dir():
    """A tiny model that has learned a little 2-digit addition (so groups carry a signal): the
    shipped warm start (28.8 % held-out; docs/learning_regime.md), which costs no SFT run."""
    from experiments.configs import sweep_lm
    return components.resolve_init_dir(sweep_lm.LEARN_WARM_START)


def test_a_cell_equals_the_pipelines_fixed_run(sft_dir, tmp_path):
    """The same config and seed through `pipeline.run` (fixed S = 2, 24 steps) and as one cell
    of the population runner: the same prompts, keys, lags and samples, and bit-identical
    parameters when the cells run one after another. Two different programs agree bit for bit
    only at the production codegen, so the body runs in a fresh interpreter at those flags (the
    default suite compiles at -O0: tests/conftest.py)."""
    run_at_production_codegen(f"from tests.test_population import cell_equals_pipeline\n"
                              f"cell_equals_pipeline({sft_dir!r}, {str(tmp_path)!r})")


def cell_equals_pipeline(sft_dir, tmp_path):
    """The body of the test above (also importable to run by hand)."""
    import pathlib  # pylint: disable=import-outside-toplevel
    tmp_path = pathlib.Path(tmp_path)
    cfg = helpers.tiny_config(**{**GRID, "init_from": sft_dir})
    comps = components.build_grpo(cfg)
    result = pipeline.run(cfg, comps, str(tmp_path / "pipe"))
    recs = metrics_lib.read_metrics(str(tmp_path / "pipe"))
    pipe_params = jax.device_get(result.params)
    pop = population.make_population(cfg, comps, seeds=[cfg.seed, cfg.seed + 1], max_lag_cap=4,
                                      keep=None)
    cells = population.make_cells(pop, lrs=[3e-3], lags=[2])       # seeds 0 and 1
    # Two cells in one program, one after another (lax.map): cell 0 is bit-identical to the
    # pipeline's run, step by step.
    metrics, params, summary = population.run_chunk(population.compile_chunk(pop, "map"), pop,
                                                    cells)
    assert [r["lag"] for r in recs] == metrics["lag"][0].tolist() == [
        min(t, 2) for t in range(STEPS)]
    for key in ("reward", "loss", "grad_norm", "drift/within_cycle", "cos/consecutive_grads"):
        assert metrics[key][0].tolist() == [r[key] for r in recs], key
    assert helpers.trees_equal(jax.tree.map(lambda x: x[0], params), pipe_params)
    assert int(summary["collapse_step"][0]) == -1
    assert sum(r["reward"] > 0 for r in recs) >= 3      # some groups did carry a signal
    assert not np.array_equal(metrics["reward"][1], metrics["reward"][0])   # seed 1: its own


@pytest.mark.slow  # ~20 s (one more program); the schedule and no cross-talk under vmap
def test_vmapped_cells_keep_the_schedule_and_do_not_talk(sft_dir):
    """Vmapped: the batched matmuls round differently from a cell alone, and sampling is
    discontinuous in θ, so a vmapped cell draws other samples after a while; what must hold is
    the schedule, and no cross-talk between cells (the same cell twice in one chunk gives the
    same run)."""
    cfg = helpers.tiny_config(**{**GRID, "init_from": sft_dir})
    comps = components.build_grpo(cfg)
    pop = population.make_population(cfg, comps, seeds=[cfg.seed, cfg.seed + 1], max_lag_cap=4,
                                      keep=None)
    cells = population.make_cells(pop, lrs=[3e-3], lags=[2])
    twice = {k: np.concatenate([v[:1], v[:1], v[1:]]) for k, v in cells.items()}
    metrics, params, _ = population.run_chunk(population.compile_chunk(pop, "vmap"), pop, twice)
    assert metrics["lag"][0].tolist() == [min(t, 2) for t in range(STEPS)]
    assert metrics["loss"][0].tolist() == metrics["loss"][1].tolist()
    assert helpers.trees_equal(jax.tree.map(lambda x: x[0], params),
                               jax.tree.map(lambda x: x[1], params))


def test_refuses_tasks_without_a_token_reward_and_bad_cells(sft_dir):
    cfg = helpers.tiny_config(**{**GRID, "init_from": sft_dir})
    comps = components.build_grpo(cfg)
    comps.task.token_reward = lambda tok: None
    with pytest.raises(ValueError, match="has no reward on tokens"):
        population.make_population(cfg, comps, seeds=[0], max_lag_cap=2)
    cfg = helpers.tiny_config(**{**GRID, "init_from": sft_dir, "staleness.policy":
                                 "bounded_async"})
    with pytest.raises(ValueError, match="bounded_async.*random_uniform"):
        population.make_population(cfg, components.build_grpo(cfg), seeds=[0], max_lag_cap=2)
    cfg = helpers.tiny_config(**{**GRID, "init_from": sft_dir, "rl.steps": 2})
    pop = population.make_population(cfg, components.build_grpo(cfg), seeds=[0], max_lag_cap=2)
    with pytest.raises(ValueError, match="S = 3: must be in"):
        population.make_cells(pop, lrs=[1e-3], lags=[3])
    with pytest.raises(ValueError, match="seeds \\[5\\] have no prompt tables"):
        population.make_cells(pop, lrs=[1e-3], lags=[0], seeds=[5])
    assert ckpt_lib.latest_step(sft_dir) == 500          # the warm start is SFT step 500


@pytest.mark.slow  # ~17 s each (XLA's memory analysis of the whole program)
@pytest.mark.parametrize("prompts,cap", [(8, 2), (16, 16)])
def test_the_memory_estimate_follows_xlas_count(sft_dir, prompts, cap):
    """`cell_bytes` (what sizes a chunk) against XLA's memory analysis of the compiled one-cell
    program: temporaries + outputs, within [0.7, 1.5]x; and per cell, linear in the chunk."""
    cfg = helpers.tiny_config(**{**GRID, "init_from": sft_dir, "rl.steps": 3,
                                 "rl.prompts_per_step": prompts})
    comps = components.build_grpo(cfg)
    pop = population.make_population(cfg, comps, seeds=[0], max_lag_cap=cap)
    cells = population.make_cells(pop, lrs=[1e-3], lags=[0])
    ma = population.compile_chunk(pop).lower(cells, pop.tables).compile().memory_analysis()
    if ma is None:
        pytest.skip("this backend has no memory analysis")
    measured = ma.temp_size_in_bytes + ma.output_size_in_bytes
    est = population.cell_bytes(cfg, comps, cap)
    assert 0.7 <= est / measured <= 1.5, (est, measured)
    assert population.chunk_size(cfg, comps, cap, 10.5 * est, 100) == 10
    assert population.chunk_size(cfg, comps, cap, 10.5 * est, 4) == 4
    assert population.chunk_size(cfg, comps, cap, 0.1 * est, 4) == 1


@pytest.mark.slow  # ~50 s (three programs); the controller in the engine: test_lr_control.py (exact testbed)
def test_the_lr_controller_keeps_the_within_cycle_drift_under_its_budget(sft_dir):
    """The controller chained after Adam (rule mode): with a huge R_batch it never acts
    (c_t = 1); with a small one it scales steps down and the measured ‖θ_t − φ_t‖ stays
    ≤ m·R_batch at fixed S, as the triangle inequality promises (lr_control's docstring), where
    the unscaled run drifts further."""
    from async_grpo import lr_control
    cfg = helpers.tiny_config(**{**GRID, "init_from": sft_dir, "rl.steps": 10})
    comps = components.build_grpo(cfg)
    cell = {"seed": jnp.uint32(cfg.seed), "seed_index": jnp.int32(0), "max_lag": jnp.int32(2),
            "lr": jnp.float32(3e-3)}
    runs = {}
    for name, ctl in (("huge", lr_control.Params(1e9, 0.5)),
                      ("tight", lr_control.Params(0.02, 0.5)),
                      ("lookahead", lr_control.Params(0.02, 0.5, 0.0, 1.0))):
        pop = population.make_population(cfg, comps, seeds=[cfg.seed], max_lag_cap=2, keep=None,
                                          lr_control=ctl)
        runs[name] = jax.jit(pop.train)(cell, pop.tables)[0]
    assert np.all(np.asarray(runs["huge"]["lr_scale"]) == 1.0)
    assert np.asarray(runs["huge"]["drift/within_cycle"]).max() > 0.01     # it would bind
    scale, drift = np.asarray(runs["tight"]["lr_scale"]), np.asarray(
        runs["tight"]["drift/within_cycle"])
    assert np.all(scale[2:] < 1.0) and np.all(scale > 0)
    assert drift.max() <= 0.5 * 0.02 * (1 + 1e-5), drift
    # Lookahead mode: the engine knows the next step's snapshot φ_{t+1}, so it runs in the
    # population too, and keeps the drift under the same budget.
    look = np.asarray(runs["lookahead"]["drift/within_cycle"])
    assert look.max() <= 0.5 * 0.02 * (1 + 1e-5), look
    assert np.all(np.asarray(runs["lookahead"]["lr_scale"])[2:] < 1.0)


@pytest.mark.slow  # ~18 s; in the default suite the engine's evaluation hook is
# tests/test_simulate.py::test_in_program_evaluations_see_theta_every_k_steps_and_change_nothing_else
def test_in_program_heldout_accuracy_is_the_evaluators():
    """`eval_every`: the held-out evaluation inside the program (greedy, token reward, the last
    batch padded and masked) gives the pipeline evaluator's numbers (greedy, Python reward) for
    θ_0 and for the cell's final θ (that the blocked scan leaves the training itself unchanged
    is tests/test_simulate.py's). From the shipped warm start (about 30 % held-out), so the
    accuracy can tell them apart."""
    from experiments.configs import sweep_lm
    c = sweep_lm.get_config("learn").run
    c.rl.steps, c.rl.prompts_per_step, c.rl.group_size = 8, 4, 4
    c.eval.num_problems, c.eval.batch_size = 20, 8              # 3 batches, 4 rows masked
    cfg = config_lib.RunConfig.from_config(c)
    comps = components.build_grpo(cfg)
    cell = {"seed": jnp.uint32(cfg.seed), "seed_index": jnp.int32(0), "max_lag": jnp.int32(2),
            "lr": jnp.float32(1e-3)}
    pop = population.make_population(cfg, comps, seeds=[cfg.seed], max_lag_cap=2, eval_every=4)
    np.testing.assert_array_equal(pop.eval_steps, [0, 4, 8])
    _, p, s = jax.jit(pop.train)(cell, pop.tables)
    ev = jax.tree.map(np.asarray, s["evals"])
    want0 = comps.evaluator(comps.init_params)
    want = comps.evaluator(p)
    for name in ("heldout/accuracy", "heldout/malformed_frac"):
        assert ev[name].shape == (3,)
        assert ev[name][0] == pytest.approx(want0[name], abs=1e-6), name
        assert ev[name][-1] == pytest.approx(want[name], abs=1e-6), name
    assert 0 < want0["heldout/accuracy"] < 1           # a set that can tell them apart
    assert want["heldout/accuracy"] != want0["heldout/accuracy"]     # and θ moved it
