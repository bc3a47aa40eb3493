"""The LR-schedule comparison on the learning testbed (experiments/learn_control.py): its analysis
on synthetic arms with a known answer (seconds), Figure 11, its report block, and (slow) the
binary end to end on the tiny config."""

import os
import subprocess
import sys

import numpy as np
import pytest

from async_grpo import metric_names as mn
from async_grpo import results
from experiments import learn_control as lcm
from experiments import report, study
from experiments.configs import learn_control as lc_cfg
from tests.helpers import repo_root

STEPS = np.arange(0, 41, 10)
SEEDS = [5, 6, 7]
LRS = [2.5e-5, 5e-5, 1e-4]


def _level(arm, s, lr, seed):
    """Flat accuracy curves (area = level): at S = 0 the best η is 5e-5 (0.60); at S = 4 the
    best fixed η is 2.5e-5 (0.54); the controllers reach 0.57 (drift) and 0.50 (ess) at S = 4
    and 0.30 at S = 16; seeds add −0.01, 0, +0.01."""
    off = 0.01 * (seed - 6)
    if arm == "fixed":
        table = {0: {2.5e-5: 0.55, 5e-5: 0.60, 1e-4: 0.50},
                 4: {2.5e-5: 0.54, 5e-5: 0.52, 1e-4: 0.40},
                 16: {2.5e-5: 0.45, 5e-5: 0.30, 1e-4: 0.10}}
        return table[s][lr] + off
    return {("drift", 4): 0.57, ("ess", 4): 0.50}.get((arm, s), 0.30) + off


def _arm(tmp_path, arm, lags, lrs, collapse_at=None):
    axes = {"S": [], "lr": [], "seed": []}
    acc, drift, cstep, scale = [], [], [], []
    for s in lags:
        for lr in lrs:
            for seed in SEEDS:
                acc.append(np.full(len(STEPS), _level(arm, s, lr, seed)))
                d = np.full(40, 0.01 * s + 0.001 * (seed - 5))
                c = collapse_at if (collapse_at and s == max(lags) and lr == lrs[-1]) else -1
                if c >= 0:
                    d[c:] = 1e3          # after a collapse the drift does not count
                drift.append(d)
                cstep.append(c)
                scale.append(0.5)
                for k, v in zip(("S", "lr", "seed"), (s, lr, seed)):
                    axes[k].append(v)
    summ = {mn.COLLAPSE_STEP: np.asarray(cstep), mn.COLLAPSED: np.asarray(cstep) >= 0}
    curves = {mn.DRIFT_CYCLE: np.asarray(drift), mn.ESS_FRAC: np.full((len(acc), 40), 0.8)}
    meta = {}
    if arm != "fixed":
        summ[mn.LR_SCALE_MEAN] = np.asarray(scale)
        meta["lr_control"] = {"r_batch": 0.05 if arm == "drift" else None, "margin": 1.0,
                              "ess_power": 0.0 if arm == "drift" else 0.5}
    gr = results.GridResult("lm", {k: np.asarray(v) for k, v in axes.items()}, summ, curves, 1,
                            evals={mn.HELDOUT_ACC: np.asarray(acc)}, eval_steps=STEPS,
                            meta=meta, machine={"cpu": "test"}, chunk_wall_s=[1.0])
    gr.write(str(tmp_path / arm))


@pytest.fixture(name="arms")
def _arms(tmp_path):
    _arm(tmp_path, "fixed", [0, 4, 16], LRS, collapse_at=20)
    _arm(tmp_path, "drift", [4, 16], [5e-5])
    _arm(tmp_path, "ess", [4, 16], [5e-5])
    return str(tmp_path)


def test_controller_plan_reads_the_base_lr_and_r_batch_from_the_fixed_arm(arms):
    gr = results.read(os.path.join(arms, "fixed"))
    plan = lcm.controller_plan(gr, margin=1.0, ess_power=0.5)
    assert plan["base_lr"] == 5e-5                          # the best area at S = 0
    # best fixed η: 2.5e-5 at S = 4 and 16 (drift 0.04 / 0.16 plus the seed's 0, 1, 2 e-3);
    # the median of the six run peaks
    assert plan["r_batch"] == pytest.approx(np.median([0.04, 0.041, 0.042, 0.16, 0.161,
                                                       0.162]))
    assert plan["drift"]["r_batch"] == plan["r_batch"] and plan["drift"]["ess_power"] == 0.0
    assert plan["ess"]["r_batch"] == 0.0 and plan["ess"]["ess_power"] == 0.5
    # the collapsed cells (S = 16, η = 1e-4) would give R_batch 1e3 if the drift after a
    # collapse counted: pick η = 1e-4 as "best" to see it is cut at the collapse step
    g = lcm.arm_grid(gr)
    r = lcm.r_batch_at_best(gr, g, {0: 1, 4: 2, 16: 2})
    assert r == pytest.approx(np.median([0.04, 0.041, 0.042, 0.16, 0.161, 0.162]))


def test_compare_gives_the_known_ratios_and_the_target_verdict(arms):
    cmp = lcm.compare(arms, target=0.95)
    rows = {(r["S"], r["arm"]): r for r in cmp["rows"]}
    assert rows[(0, "fixed")]["lr"] == 5e-5 and rows[(0, "fixed")]["ratio"]["lo"] is None
    assert rows[(4, "fixed")]["lr"] == 2.5e-5 and rows[(16, "fixed")]["lr"] == 2.5e-5
    ref = 0.60 + 0.01 * (np.asarray(SEEDS) - 6)
    for (s, arm), level in {(4, "drift"): 0.57, (4, "ess"): 0.50, (16, "drift"): 0.30,
                            (4, "fixed"): 0.54, (16, "fixed"): 0.45}.items():
        want = (level + 0.01 * (np.asarray(SEEDS) - 6)) / ref
        assert rows[(s, arm)]["ratio"]["mean"] == pytest.approx(want.mean())
        assert rows[(s, arm)]["area"]["mean"] == pytest.approx(level)
        assert rows[(s, arm)]["ratio"]["lo"] < want.mean() < rows[(s, arm)]["ratio"]["hi"]
    assert rows[(16, "fixed")]["collapsed"] == 0 and rows[(4, "drift")]["lr_scale_mean"] == 0.5
    assert rows[(4, "ess")]["ess_mean"] == pytest.approx(0.8)
    assert cmp["S_top"] == 16 and not any(v["mean_above"] for v in cmp["target_met"].values())
    # at a target the S = 16 drift arm meets with its whole interval
    low = lcm.compare(arms, target=0.4)
    assert low["target_met"]["drift"]["interval_above"]
    assert low["target_met"]["ess"]["interval_above"]            # 0.50 of S = 0 at S = 16
    assert low["target_met"]["fixed"]["interval_above"]          # 0.75 of S = 0


def test_the_paired_ratio_interval_covers_and_the_target_rule_has_power():
    """Synthetic paired areas with the noise the comparison measured (a seed effect shared by
    both arms, sd 0.01, and per-run noise, sd 0.008, around areas near 0.6; 5 seeds): the t
    interval of the per-seed ratio covers the mean per-seed ratio about 95 % of the time; the
    rule "the interval's lower end ≥ 95 %" says "reaches" at most 5 % of the time when the true
    ratio is 0.93, and at least 80 % of the time when it is 1.00."""
    from scipy import stats
    rng = np.random.default_rng(0)

    def draw(true_ratio, reps, n=5):
        seed = rng.normal(0, 0.01, (reps, n))
        ref = 0.6 + seed + rng.normal(0, 0.008, (reps, n))
        arm = true_ratio * (0.6 + seed) + rng.normal(0, 0.008, (reps, n))
        return arm, ref

    def intervals(arm, ref):          # lcm._ratio, vectorized over repetitions
        x = arm / ref
        half = stats.t.ppf(0.975, x.shape[1] - 1) * x.std(1, ddof=1) / np.sqrt(x.shape[1])
        return x.mean(1) - half, x.mean(1) + half

    arm, ref = draw(0.9, 3)
    lo, hi = intervals(arm, ref)
    for i in range(3):
        r = lcm._ratio(arm[i], ref[i])
        assert (r["lo"], r["hi"]) == pytest.approx((lo[i], hi[i]), rel=1e-12)
    truth = float(np.mean(np.divide(*draw(0.9, 200_000, 2))))
    lo, hi = intervals(*draw(0.9, 4000))
    assert 0.93 <= np.mean((lo <= truth) & (truth <= hi)) <= 0.97
    false = np.mean(intervals(*draw(0.93, 4000))[0] >= 0.95)
    power = np.mean(intervals(*draw(1.0, 4000))[0] >= 0.95)
    assert false <= 0.05 and power >= 0.8, (false, power)
    assert not lcm.reaches({"mean": 1.0, "lo": None, "hi": None, "n": 1}, 0.95)


def test_window_area_is_the_mean_over_a_wall_clock_window():
    from async_grpo import learning
    steps = np.arange(0, 201, 20.0)
    acc = steps / 200.0                                   # linear: the mean over [0, e] is e/400
    for end in (200.0, 150.0, 37.0):
        assert learning.window_area(steps, acc, end) == pytest.approx(end / 400.0, rel=1e-12)
    assert learning.window_area(steps, acc, 200.0) == pytest.approx(learning.area(steps, acc))
    for bad in (0.0, 250.0, float("nan")):
        with pytest.raises(ValueError, match="end="):
            learning.window_area(steps, acc, bad)


def test_per_second_compares_over_the_same_wall_clock_window(arms):
    """With t_gen = 0.3 and t_learn = 0.1 s, S >= 1 runs a step in 0.3 s against S = 0's 0.4 s:
    S = 0's window is 3/4 of its run; on flat curves per second equals per step, and a rising
    S = 0 curve makes the window's mean lower, so per second is higher than per step."""
    timing = {"t_gen": 0.3, "t_learn": 0.1, "overhead": 0.0}
    cmp = lcm.compare(arms, timing=timing)
    for r in cmp["rows"]:
        assert r["per_second"]["mean"] == pytest.approx(r["ratio"]["mean"])
        if r["S"] >= 1:
            assert r["per_second"]["window_steps"] == pytest.approx(30.0)
    gr = results.read(os.path.join(arms, "fixed"))
    acc = gr.evals[mn.HELDOUT_ACC].copy()
    s0 = gr.axes["S"] == 0
    acc[s0] = acc[s0] * np.linspace(0.5, 1.5, len(STEPS))    # rising, same area over the run
    gr.evals[mn.HELDOUT_ACC] = acc
    gr.write(os.path.join(arms, "fixed"))
    cmp = lcm.compare(arms, timing=timing)
    r = next(r for r in cmp["rows"] if (r["S"], r["arm"]) == (4, "drift"))
    assert r["per_second"]["mean"] > r["ratio"]["mean"] * 1.05
    assert "per second" in lcm.table(cmp)


def test_compare_refuses_arms_on_other_seeds_and_waits_for_the_fixed_arm(tmp_path, arms):
    assert lcm.compare(str(tmp_path / "nothing")) is None
    gr = results.read(os.path.join(arms, "ess"))
    gr.axes["seed"] = gr.axes["seed"] + 10
    gr.write(os.path.join(arms, "ess"))
    with pytest.raises(ValueError, match="differ from the fixed arm's"):
        lcm.compare(arms)


def test_report_block_and_figure_11(arms, tmp_path):
    text = report.learning_control(arms)
    assert "per second" not in text and "collapsed cells (of 3): fixed 0, drift 0, ess 0" in text
    assert "| 4 | drift | 5e-05 | 0.570" in text
    assert "drift at S = 16: 50.0 % of the S = 0 area" in text and "does not reach" in text
    assert "R_batch = 0.05" in text
    with pytest.raises(report.MissingResults):
        report.learning_control(str(tmp_path / "none"))
    s = {"learn_control": lcm.compare(arms)}
    study.fig_learning_control(s, str(tmp_path / "fig11"))
    study.fig_learning_control({"learn_control": None}, str(tmp_path / "fig11_empty"))
    for stem in ("fig11", "fig11_empty"):
        assert os.path.getsize(tmp_path / f"{stem}.png") > 10_000


def test_config_and_bad_settings():
    c = lc_cfg.get_config()
    assert c.run.seed == 5 and c.num_seeds == 5 and c.lags == "0,4,8,16"
    with pytest.raises(ValueError, match="learn_control config argument 'huge'"):
        lc_cfg.get_config("huge")
    bad = lc_cfg.get_config("tiny")
    bad.target = 0.0
    with pytest.raises(ValueError, match="target=0.0"):
        lcm.run(bad, "/nonexistent/never")
    bad = lc_cfg.get_config("tiny")
    bad.control_lags = "0,2"
    with pytest.raises(ValueError, match="control_lags='0,2'"):
        lcm.run(bad, "/nonexistent/never")


@pytest.mark.slow  # ~1 minute: three tiny grids; the analysis is covered above in seconds
def test_binary_end_to_end_on_the_tiny_config(tmp_path):
    env = dict(os.environ, PYTHONPATH=repo_root(), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "experiments.learn_control",
                           "--config=experiments/configs/learn_control.py:tiny",
                           f"--workdir={tmp_path}"], cwd=repo_root(), env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| 2 | ess |" in proc.stdout and "base η" in proc.stdout
    cmp = lcm.compare(str(tmp_path))
    assert set(cmp["grids"]) == set(lcm.ARMS)
    ess = results.read(str(tmp_path / "ess"))
    assert ess.meta["lr_control"]["ess_power"] == 0.5 and ess.meta["lr_control"]["r_batch"] is None
    # the VCPO factor is √(ESS/B) of each step: at most 1, below 1 once the batch is stale
    scale = ess.curves[mn.LR_SCALE]
    assert np.all((scale > 0) & (scale <= 1)) and scale[:, 3:].min() < 1
    np.testing.assert_allclose(scale, np.sqrt(ess.curves[mn.ESS_FRAC]), rtol=1e-5)
