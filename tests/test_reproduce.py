"""experiments.reproduce and experiments.study: figure selection, ETA, the GPU commands, the
analysis helpers, and (end to end) the tiny reproduction plus the notebook run on its results."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from async_grpo import results
from experiments import grids, reproduce, study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_figures_accepts_names_numbers_and_all_and_refuses_the_rest():
    assert reproduce.parse_figures("all") == list(study.FIGURES)
    assert reproduce.parse_figures("eta_max, 1") == ["phase", "eta_max"]
    assert reproduce.parse_figures("6,cosine") == ["cosine", "reward"]
    assert reproduce.parse_figures("7,10") == ["learning_curves", "learning_time"]
    assert reproduce.parse_figures("11") == ["learning_control"]
    for bad in ("12", "0", "phases", "", " , "):
        with pytest.raises(ValueError, match="--figure"):
            reproduce.parse_figures(bad)


def test_stages_follow_the_figures():
    # lm_bias reads lm_sweep's SFT checkpoint: asking for its figure runs lm_sweep first
    stages = [s.name for s in reproduce.stages_for(["delta"], "cpu")]
    assert stages == ["exact_bias", "lm_sweep", "lm_bias"]
    names = {s.name for s in reproduce.stages_for(["phase"], "cpu")}
    assert "exact_bias" not in names and "lm_bias" not in names
    assert {"exact_sweep", "lm_sweep"} <= names
    # the tiny scale has no LM stage (minutes even on the smallest grid)
    tiny = {s.name for s in reproduce.stages_for(study.FIGURES, "tiny")}
    assert not {"lm_sweep", "lm_bias", "lm_learn"} & tiny
    assert [s.name for s in reproduce.stages_for(["eta_star"], "cpu")] == ["lm_learn"]
    assert [s.name for s in reproduce.stages_for(["learning_time"], "cpu")] == [
        "lm_learn", "lm_learn_time"]
    # a stage's arguments may name the study directory; run_stage fills it in
    lm_bias = next(s for s in reproduce.STAGES if s.name == "lm_bias")
    assert any("{workdir}/lm_sweep/sft" in a for a in lm_bias.args["cpu"])


def test_reused_stages_leave_the_eta_to_the_measured_ones():
    p = reproduce.Progress({"a": 10.0, "b": 30.0, "c": 60.0}, out=io.StringIO())
    p.reuse("a")
    assert p.eta() == pytest.approx(90.0)
    p.done["b"] = 60.0                       # twice as slow as estimated
    assert p.eta() == pytest.approx(120.0)


def test_progress_eta_rescales_the_stages_left_by_the_measured_speed():
    p = reproduce.Progress({"a": 10.0, "b": 30.0}, out=io.StringIO())
    assert p.eta() == pytest.approx(40.0)
    assert p.eta("a", 4.0) == pytest.approx(36.0)
    p.done["a"] = 20.0                    # twice as slow as estimated
    assert p.eta() == pytest.approx(60.0)
    assert p.eta("b", 50.0) == pytest.approx(10.0)
    p.say("hello")
    assert "ETA" in p.out.getvalue() and "hello" in p.out.getvalue()


def test_gpu_scale_writes_the_commands_and_runs_nothing(tmp_path):
    paths = reproduce.write_gpu(str(tmp_path))
    text = open(paths[0]).read()
    n = len(reproduce.GPU_LAGS) * len(reproduce.GPU_LRS) * len(reproduce.GPU_SEEDS)
    assert text.count("python3 -m experiments.train") == n and "python -m" not in text
    assert "--config.staleness.max_lag=32" in text and "gsm8k_llama.py" in text
    assert "OUT=${OUT:-" not in text and "80 GB GPU each" not in text
    assert f'cd "${{ASYNC_GRPO_ROOT:-{reproduce._REPO_ROOT}}}"' in text  # pylint: disable=protected-access
    # OUT is the one argument; the script refuses to run without it, before anything else.
    proc = subprocess.run(["bash", paths[0]], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "MODEL": "m", "GSM8K": "g"})
    assert proc.returncode == 2 and "usage: bash" in proc.stderr
    # With OUT, it changes to the repository root before the first run (here: python3 is a
    # stub that prints where it runs and its arguments).
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python3").write_text("#!/bin/sh\necho \"$PWD $*\"; exit 1\n")
    (stub / "python3").chmod(0o755)
    proc = subprocess.run(["bash", paths[0], str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=60, env={"PATH": f"{stub}:{os.environ['PATH']}",
                                                      "MODEL": "m", "GSM8K": "g"})
    first = proc.stdout.splitlines()[0]
    assert first.startswith(reproduce._REPO_ROOT + " -m experiments.train")  # pylint: disable=protected-access
    assert f"--workdir={tmp_path / 'out'}/S0_lr1e-08_seed0" in first
    # the grid brackets the paper's S·η_max ≈ 1.6e-6 by at least 4x on both sides at S = 8..32
    for s in (8, 16, 32):
        assert min(reproduce.GPU_LRS) * 4 <= 1.6e-6 / s
        assert max(reproduce.GPU_LRS) >= 4 * 1.6e-6 / s
    assert not any(p.name.startswith(("exact", "lm_sweep")) for p in tmp_path.iterdir())


def test_traces_aligned_on_the_collapse_step():
    al = study.aligned_traces(np.tile(np.arange(10.0), (2, 1)), np.array([5, 1]), 4)
    np.testing.assert_allclose(al[0], [2, 3, 4, 5])
    assert np.isnan(al[1, :2]).all() and (al[1, 2:] == [0, 1]).all()


def _fake_result(collapse_step, lags=(0, 1), lrs=(1.0, 2.0), seeds=(0, 1), steps=30):
    rows = [(s, lr, seed) for s in lags for lr in lrs for seed in seeds]
    axes = {"S": np.array([r[0] for r in rows]), "lr": np.array([r[1] for r in rows]),
            "seed": np.array([r[2] for r in rows])}
    cs = np.asarray(collapse_step)
    return results.GridResult("exact", axes, {"collapse_step": cs, "collapsed": cs >= 0},
                              {"J": np.zeros((len(rows), steps))}, dir="fake")


def test_grid_recovers_the_product_and_refuses_a_partial_grid():
    run = study._run_of(_fake_result([-1, -1, -1, 5, -1, 7, 3, 4]))
    g = grids.grid(run)
    assert g["collapsed"].shape == (2, 2, 2) and g["num_steps"] == 30
    assert g["collapsed"][1, 1].all() and not g["collapsed"][0, 0].any()
    assert g["t_collapse"][0, 1, 1] == 5
    assert study.pick_lag(g) == 1
    full = _fake_result([-1] * 8)
    partial = results.GridResult("exact", {k: v[:-1] for k, v in full.axes.items()},
                                 {k: v[:-1] for k, v in full.summaries.items()})
    with pytest.raises(ValueError, match="not a full"):
        grids.grid(study._run_of(partial))


def test_claims_markdown_of_an_empty_study_says_not_measured():
    from experiments import claims
    md = study.claims_markdown({"exact": {}, "sampled": {}, "bias": None, "lm": None})
    assert md.count("Not measured at this scale") == len(claims.discover()) == 6
    assert "GPU-scale run" in md


@pytest.fixture(name="tiny_study", scope="module")
def _tiny_study(tmp_path_factory):
    """The README's main job at toy size, run once: (workdir, its stdout)."""
    wd = tmp_path_factory.mktemp("reproduce") / "study"
    cmd = [sys.executable, "-m", "experiments.reproduce", "--scale=tiny", f"--workdir={wd}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return wd, cmd, out.stdout


@pytest.mark.slow  # ~45 s (every stage as a process); in the default suite the binary runs in
# test_gpu_scale_writes_the_commands_and_runs_nothing and, drawing from results,
# tests/test_learning_report.py; every stage's binary has its own tests
def test_tiny_reproduction_end_to_end(tiny_study):
    """Every stage runs, the figures and the claims table are written; a second call reuses
    every stage."""
    wd, cmd, stdout = tiny_study
    assert "ETA" in stdout
    for i, name in enumerate(study.FIGURES):
        for ext in ("png", "pdf"):
            assert (wd / "figures" / f"fig{i + 1}_{name}.{ext}").stat().st_size > 1000
    md = (wd / "results.md").read_text()
    assert "**Claim 1.**" in md and "**Claim 5.**" in md
    # the same stages again (the figures that read all three: fewer to redraw)
    again = subprocess.run([*cmd, "--figure=phase,delta"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("reusing finished results") == 3


@pytest.mark.slow  # ~20 s (a kernel and every figure); the figures themselves are checked above
def test_the_notebook_runs_on_a_tiny_reproduction(tiny_study):
    wd = tiny_study[0]
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "study.ipynb"), as_version=4)
    os.environ["ASYNC_GRPO_RESULTS"] = str(wd)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={
            "metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    finally:
        del os.environ["ASYNC_GRPO_RESULTS"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "exact population" in text and "S=  0" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images == len(study.FIGURES)


def test_stages_name_their_configs_with_an_argument_and_no_flag_lists():
    """At --scale=tiny every exact stage is `--config=<file>:tiny` (no per-key flag list)."""
    import importlib  # pylint: disable=import-outside-toplevel
    for stage in reproduce.STAGES:
        for scale, args in stage.args.items():
            assert not any(a.startswith("--config.") and "{workdir}" not in a for a in args), (
                stage.name, scale)
            if scale == "tiny":
                assert len(args) == 1 and args[0].endswith(":tiny") or args[0].endswith(",tiny")
            for a in args:
                if a.startswith("--config="):
                    path, _, arg = a[len("--config="):].partition(":")
                    mod = importlib.import_module(path[:-3].replace("/", "."))
                    assert mod.get_config(arg) if arg else mod.get_config()
