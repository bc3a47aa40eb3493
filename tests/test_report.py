"""experiments.report: docs' result tables are rewritten from results directories."""

import os
import re
import subprocess
import sys

import pytest

from experiments import report
from tests.helpers import repo_root

REPO = repo_root()


@pytest.fixture(name="sweep_runs", scope="module")
def _sweep_runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.exact_sweep", f"--workdir={runs / 'sweep'}",
         "--config.lags=0,1,4", "--config.lr_min=2", "--config.lr_max=64",
         "--config.num_seeds=2", "--config.train.num_steps=60", "--config.n_boot=50"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs


def test_blocks_are_rewritten_and_checked(sweep_runs, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    doc = docs / "x.md"
    doc.write_text("intro\n<!-- report: exact_sweep sweep -->\nstale\n<!-- end report -->\n"
                   "<!-- report: exact_families sweep -->\n<!-- end report -->\nend\n")
    args = ["--runs", str(sweep_runs), "--docs", str(docs)]
    assert report.main(args + ["--check"]) == 1            # out of date
    assert report.main(args) == 0
    text = doc.read_text()
    assert "stale" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert re.search(r"\| 4 \| [\d.]+ \[", text) and "**α (S ≥ 1)**" in text
    assert "| `sweep` | linear, sgd, fixed, T = 60" in text
    assert report.main(args + ["--check"]) == 0            # now up to date
    doc.write_text(text.replace("| 4 |", "| 5 |"))
    assert report.main(args + ["--check"]) == 1            # a hand edit is caught
    doc.write_text("<!-- report: exact_sweep nowhere -->\nx\n<!-- end report -->\n")
    assert report.main(args + ["--check"]) == 1            # missing results fail the check
    with pytest.raises(ValueError, match="unknown report kind 'nope'"):
        report.render("nope sweep", str(sweep_runs))


def test_every_block_in_docs_names_a_known_report():
    for name in sorted(os.listdir(os.path.join(REPO, "docs"))):
        if name.endswith(".md"):
            with open(os.path.join(REPO, "docs", name), encoding="utf-8") as f:
                for m in report.BLOCK.finditer(f.read()):
                    kind = m.group("spec").split()[0]
                    assert kind in report.REPORTS, (name, kind)


def test_gpu_check_block_renders_the_check_table(tmp_path):
    import json  # pylint: disable=import-outside-toplevel
    d = tmp_path / "check"
    d.mkdir()
    json.dump(dict(tiny=True, budget_s=1800, wall_s=612.4,
                   probe=dict(jax="0.10.2", count=1, device="cpu", backend="cpu",
                              python="3.12.1"),
                   parts={"learner": dict(row=["ours 1 tok/s", "≥ 1.1× peer", "—"],
                                          result=dict(part_wall_s=200.2)),
                          "memory": dict(row=["1.00 GB of 80", "≤ 80 GB", "yes"],
                                         result=dict(part_wall_s=30))}), open(d / "check.json", "w"))
    text = report.render("gpu_check check", str(tmp_path))
    assert "| learner | ours 1 tok/s | ≥ 1.1× peer | — (tiny) | 200 |" in text
    assert "| memory | 1.00 GB of 80 | ≤ 80 GB | — (tiny) | 30 |" in text
    assert "--tiny (toy shapes" in text and "Python 3.12.1" in text and "612 s of a 1800 s" in text
    with pytest.raises(report.MissingResults):
        report.render("gpu_check nowhere", str(tmp_path))


def test_memory_plan_block_renders_one_column_per_plan(tmp_path):
    """KIND memory_plan: every JSON `bench.memory_plan --out` wrote, as one column, with the
    backend named in the header (the CPU analysis must never pass for a GPU's)."""
    import json  # pylint: disable=import-outside-toplevel
    d = tmp_path / "memory_plan"
    d.mkdir()
    settings = dict(batch=8, seq_len=1024, prompt_len=256, micro_batch=8, max_lag=8,
                    logits_chunk=128, remat="full", compute_dtype="bfloat16",
                    param_dtype="float32", opt_state_dtype="float32", snapshot_dtype="compute",
                    snapshot_memory="device", cosines=True, loss="grpo", sample_prompts=32,
                    num_samples=8, new_tokens=768)
    for name, snap, total in (("a", "held snapshots: 9 × 2.47 GB (bfloat16)", 90e9),
                              ("b", "held snapshots: 9 × 2.47 GB (bfloat16) in host memory", 70e9)):
        rows = [["θ (params, float32)", 4.94e9], [snap, 2.47e9 * (9 if name == "a" else 1)]]
        json.dump(dict(backend="cpu", preset="llama3.2-1b", num_params=1235814400, jax="0",
                       settings=dict(settings, micro_batch=8 if name == "a" else 2),
                       budget_rows=rows, total=total, budget=80e9, margin=80e9 - total),
                  open(d / f"{name}.json", "w"))
    text = report.render("memory_plan memory_plan", str(tmp_path))
    assert "**XLA:CPU memory analysis**" in text
    assert "| rows per micro-batch | 8 | 2 |" in text
    assert "| held snapshots | 22.23 (9 × 2.47 GB (bfloat16)) | 2.47 (9 × 2.47 GB (bfloat16) in " \
           "host memory) |" in text
    assert "| **total** | **90.00** | **70.00** |" in text and "| margin to 80.00 | -10.00 | 10.00 |" in text
    with pytest.raises(report.MissingResults):
        report.render("memory_plan nowhere", str(tmp_path))


def test_the_docs_verdict_rules_are_the_claim_modules():
    """docs/results.md's verdict rules are the report block rendered from the claim modules
    (no results needed), so a changed rule or threshold cannot leave the docs behind."""
    from tests.helpers import repo_root
    text = open(os.path.join(repo_root(), "docs", "results.md"), encoding="utf-8").read()
    blocks = {m.group("spec"): m.group("body") for m in report.BLOCK.finditer(text)}
    assert blocks["claims_rules"] == report.render("claims_rules", "runs")
    for n in range(1, 7):
        assert f"**Claim {n}**" in blocks["claims_rules"]
    assert "SLOPE_MARGIN` (= 0.5)" in blocks["claims_rules"]
