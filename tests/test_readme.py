"""The README's Python snippets run as written.

Each ```python block of README.md is executed; the names a usage snippet takes from the reader's
own code (per-token arrays, an update mapping, ...) are defined here, small and synthetic. The
loss snippet runs once for every loss name its comment lists ("or "grpo", ...")."""

import ast
import builtins
import os
import re

import numpy as np
import pytest

from tests.helpers import repo_root


def _readme():
    with open(os.path.join(repo_root(), "README.md"), encoding="utf-8") as f:
        return f.read()


def _blocks():
    return re.findall(r"```python\n(.*?)```", _readme(), re.S)


def _block(marker):
    found = [b for b in _blocks() if marker in b]
    assert len(found) == 1, f"one README python block should contain {marker!r}: {len(found)}"
    return found[0]


def _free_names(code):
    """Names the snippet reads without defining or importing them (what the reader supplies)."""
    tree = ast.parse(code)
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return loaded - bound - set(dir(builtins))


def _loss_inputs(group_size=8, num_groups=2, length=6):
    """Per-token log-probs of a sampled batch: the behavior policy a little off the current one
    and the reference further off, ragged masks, 0/1 rewards with a mixed and an all-equal group."""
    rng = np.random.default_rng(0)
    b = group_size * num_groups
    logp = np.log(rng.uniform(0.05, 0.95, (b, length))).astype(np.float32)
    mask = (np.arange(length)[None] < rng.integers(1, length + 1, b)[:, None]).astype(np.float32)
    rewards = np.concatenate([rng.integers(0, 2, group_size), np.ones(group_size)])
    return {"logp": logp, "behavior_logp": logp + 0.05 * rng.standard_normal(logp.shape),
            "ref_logp": logp + 0.2 * rng.standard_normal(logp.shape), "mask": mask,
            "rewards": rewards.astype(np.float32)}


def test_every_readme_python_block_is_run_here():
    """A new block fails this test until it is given a test below (and a marker here)."""
    markers = ("L.make_loss(", "simulate.make_train(")
    assert len(_blocks()) == len(markers)
    for m in markers:
        _block(m)


LOSS_BLOCK = _block("L.make_loss(")
LISTED = re.findall(r'"(\w+)"', re.search(r"make_loss\((.*)", LOSS_BLOCK).group(1))


def test_the_loss_snippet_lists_names():
    assert LISTED[0] == "dapo" and "grpo" in LISTED and len(LISTED) >= 5, LISTED


@pytest.mark.parametrize("name", LISTED)
def test_loss_snippet_runs_as_written_for_every_listed_name(name):
    import async_grpo.losses as L
    code = LOSS_BLOCK.replace(f'make_loss("{LISTED[0]}")', f'make_loss("{name}")', 1)
    inputs = _loss_inputs()
    assert _free_names(code) == set(inputs), _free_names(code)
    scope = dict(inputs)
    exec(compile(code, "README.md", "exec"), scope)           # noqa: S102 (the README's code)
    loss, metrics = scope["loss"], scope["metrics"]
    assert np.isfinite(float(loss)) and metrics, name
    assert scope["loss_fn"].config == L.loss_config(name)


def test_simulate_snippet_runs_as_written():
    from experiments.delayed_quadratic import make_problem
    code = _block("simulate.make_train(")
    update, init, objective, optimizer = make_problem((1.0, 0.25), 0.0)
    inputs = {"update": update, "init": init, "objective": objective, "optimizer": optimizer}
    assert _free_names(code) == set(inputs), _free_names(code)
    scope = dict(inputs)
    exec(compile(code, "README.md", "exec"), scope)           # noqa: S102 (the README's code)
    metrics, summary = scope["metrics"], scope["summary"]
    n = 3 * 2 * 3                                              # max_lag × lr × seed
    assert metrics["J"].shape[0] == n and len(summary["collapse_step"]) == n
