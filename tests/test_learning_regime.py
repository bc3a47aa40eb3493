"""The learning regime's shipped warm start (docs/learning_regime.md): its files are the ones
its manifest hashed, it loads through `run.init_from` from any directory, and the :learn grids
parse and point at it."""

import dataclasses
import json
import os

import jax.numpy as jnp
import pytest

from async_grpo import checkpoint as ckpt_lib
from async_grpo import config as config_lib
from async_grpo.rl import components
from experiments import sweep
from experiments import warm_start
from experiments.configs import sweep_lm
from tests.helpers import repo_root

SHIPPED = os.path.join(repo_root(), sweep_lm.LEARN_WARM_START)


def _manifest():
    with open(os.path.join(SHIPPED, warm_start.MANIFEST), encoding="utf-8") as f:
        return json.load(f)


def test_the_shipped_files_are_the_ones_the_manifest_hashed():
    m = _manifest()
    assert m["files"], "empty manifest"
    assert warm_start.file_hashes(SHIPPED) == m["files"]
    total = sum(os.path.getsize(os.path.join(SHIPPED, f)) for f in m["files"])
    assert total < 3 * 2**20, f"{total} bytes: ship the parameters only"


def test_the_learn_config_loads_the_shipped_weights_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)            # the relative path resolves from the repository root
    run = config_lib.RunConfig.from_config(sweep_lm.get_config("learn").run)
    assert run.init_from == sweep_lm.LEARN_WARM_START and not os.path.isabs(run.init_from)
    run = dataclasses.replace(run, eval=dataclasses.replace(run.eval, num_problems=8,
                                                            batch_size=8))
    comps = components.build_grpo(run)
    assert comps.init_dir.startswith(SHIPPED)
    assert ckpt_lib.params_digest(comps.init_params) == _manifest()["params_digest"]
    assert 0.05 <= _manifest()["heldout"]["heldout/accuracy"] <= 0.45


def test_a_relative_init_from_prefers_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no SFT checkpoint"):
        components.resolve_init_dir("experiments/data/no_such_warm_start")
    local = tmp_path / sweep_lm.LEARN_WARM_START
    with ckpt_lib.make_manager(str(local / ckpt_lib.CHECKPOINT_DIR)) as m:
        ckpt_lib.save(m, 3, {"params": {"w": jnp.ones(2)}})
    assert components.resolve_init_dir(sweep_lm.LEARN_WARM_START) == os.path.join(
        sweep_lm.LEARN_WARM_START, ckpt_lib.CHECKPOINT_DIR)


def test_params_digest_sees_every_bit_and_name():
    a = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    assert ckpt_lib.params_digest(a) == ckpt_lib.params_digest(dict(a))
    assert ckpt_lib.params_digest(a) != ckpt_lib.params_digest({**a, "w": a["w"].at[0].set(
        jnp.nextafter(1.0, 2.0))})
    assert ckpt_lib.params_digest(a) != ckpt_lib.params_digest({"v": a["w"], "b": a["b"]})


@pytest.mark.parametrize("arg,min_cells", [("learn", 100), ("learn_quick", 2),
                                           ("learn_study", 32)])
def test_the_learn_grids_parse(arg, min_cells):
    plan = sweep.lm_plan(sweep_lm.get_config(arg))
    cells = len(plan.lags) * len(plan.lrs) * len(plan.seeds)
    assert cells >= min_cells
    assert plan.config.init_from == sweep_lm.LEARN_WARM_START
    if arg == "learn":
        assert plan.lags == [0, 1, 2, 4, 8, 16] and len(plan.seeds) >= 5
        ratios = [b / a for a, b in zip(plan.lrs, plan.lrs[1:])]
        assert all(abs(r - 2 ** 0.5) < 1e-6 for r in ratios)      # half-octave steps
    assert plan.eval_every and plan.config.rl.steps % plan.eval_every == 0
    if arg == "learn_study":      # claim 6's γ needs three S >= 1 and three η around η*
        assert sum(s >= 1 for s in plan.lags) >= 3 and len(plan.lrs) >= 3 and 0 in plan.lags
