"""The learning regime's readers on a synthetic grid with a known answer: the study loader,
claim 6's row, Figures 7 and 8 and the docs' report blocks (no training: seconds)."""

import json
import os

import numpy as np
import pytest

from async_grpo import metric_names as mn
from async_grpo import results
from experiments import report, study

LAGS, SEEDS = [0, 1, 2, 4, 8, 16], [0, 1, 2]
LRS = 1e-6 * 2.0 ** (np.arange(15) / 2)
STEPS = np.arange(0, 201, 20)


def _learn_dir(tmp_path, gamma=1.0):
    """η* = 4e-5 · max(S, 1)^−γ; the ceiling falls with |log η − log η*|; the largest η
    collapses at step 100 at every S, and its accuracy is 0 afterwards."""
    rng = np.random.default_rng(0)
    axes = {k: [] for k in ("S", "lr", "seed")}
    acc, cstep = [], []
    for s in LAGS:
        star = 4e-5 * max(s, 1) ** -gamma
        for lr in LRS:
            for seed in SEEDS:
                top = 0.7 - 0.05 * np.log(lr / star) ** 2
                curve = 0.3 + (max(top, 0.3) - 0.3) * STEPS / (STEPS + 40.0)
                curve = curve + rng.normal(0, 0.003, len(STEPS))
                c = 100 if lr == LRS[-1] else -1
                if c >= 0:
                    curve[STEPS > c] = 0.0
                acc.append(curve)
                cstep.append(c)
                for k, v in zip(("S", "lr", "seed"), (s, lr, seed)):
                    axes[k].append(v)
    n = len(acc)
    gr = results.GridResult(
        "lm", {k: np.asarray(v) for k, v in axes.items()},
        {mn.COLLAPSE_STEP: np.asarray(cstep), "collapsed": np.asarray(cstep) >= 0,
         mn.HELDOUT_ACC: np.asarray(acc)[:, -1]},
        {mn.REWARD: np.zeros((n, 200))}, 1, evals={mn.HELDOUT_ACC: np.asarray(acc)},
        eval_steps=STEPS, meta={"run": {"eval": {"num_problems": 500}}},
        machine={"cpu": "test"}, chunk_wall_s=[1.0, 2.0])
    d = tmp_path / "lm_learn"
    gr.write(str(d))
    return str(d)


def _time_dir(tmp_path, t_gen=0.3, t_learn=0.1):
    d = tmp_path / "lm_learn_time"
    d.mkdir()
    rows = {"sampling + reward (alone)": [t_gen] * 3, "learner step (alone)": [t_learn] * 3,
            "sum of parts": [t_gen + t_learn] * 3, "pipeline S=0": [t_gen + t_learn + 0.01] * 3,
            "pipeline S=1": [t_gen + t_learn] * 3}
    (d / "async_pipeline.json").write_text(json.dumps(
        {"device": "cpu test", "machine": {}, "blocks": 3, "seconds_or_fraction": rows}))
    return str(d)


def test_the_learning_grid_reads_back_and_claim6_finds_its_law(tmp_path):
    g = study.load_learn(_learn_dir(tmp_path))
    assert g["heldout"].shape == (6, 15, 3, 11) and g["collapse_step"].shape == (6, 15, 3)
    from experiments.claims import claim6_learning as c6
    row = c6.rows({"learn": g})[0]
    assert row["verdict"].startswith("supported"), row
    assert "T = 200" in row["grid"]
    flat = study.load_learn(_learn_dir(tmp_path / "flat", gamma=0.0))
    assert c6.rows({"learn": flat})[0]["verdict"].startswith("not supported")


def test_report_blocks_and_figures_of_the_learning_regime(tmp_path):
    learn, tdir = _learn_dir(tmp_path), _time_dir(tmp_path)
    text = report.learning_regime(learn)
    assert text.count("\n| ") == 7 and "Claim 6:" in text and "supported" in text
    assert "| 0 / 3 |" in text and "3 / 3" not in text     # best η never the collapsing one
    t = report.learning_time(learn, tdir)
    # S = 0: t_gen + t_learn + overhead = 410 ms; S >= 1: max + overhead = 310 ms
    assert "| 0 |" in t and "410.0 ms (gen + learn)" in t and "310.0 ms (gen)" in t
    rows = study.learning_time_rows(study.load_learn(learn), study.load_learn_time(tdir))
    assert rows[0]["target"] == pytest.approx(0.9 * rows[0]["ceiling"])
    assert all(r["seconds_to_target"] == pytest.approx(r["steps_to_target"] * r["step_s"])
               for r in rows if r["steps_to_target"] is not None)
    with pytest.raises(FileNotFoundError):
        report.learning_time(learn, str(tmp_path / "nothing"))
    s = {"learn": study.load_learn(learn), "learn_time": study.load_learn_time(tdir)}
    names = ["learning_curves", "eta_star", "ceiling", "learning_time"]
    paths = study.draw(s, names, str(tmp_path / "fig"))
    assert [os.path.basename(p) for p in paths] == [f"fig{7 + i}_{n}.png"
                                                    for i, n in enumerate(names)]
    assert all(os.path.getsize(p) > 10_000 for p in paths)


def test_reproduce_draws_the_learning_figures_from_results_it_did_not_run(tmp_path):
    """--scale=draw runs no stage: Figures 7-10 and claim 6's row come from the grids already
    in the workdir (here synthetic ones)."""
    from experiments import reproduce
    _learn_dir(tmp_path), _time_dir(tmp_path)
    reproduce.run(str(tmp_path), "7,8,9,10", "draw")
    for name in ("fig7_learning_curves.png", "fig8_eta_star.png", "fig9_ceiling.png",
                 "fig10_learning_time.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    md = (tmp_path / "results.md").read_text()
    assert "**Claim 6.**" in md and "learning regime" in md and "supported" in md
    assert not (tmp_path / "logs").exists()                 # nothing ran
