"""Docs that show code output cannot drift from the code: the tables are what the commands print
and the code shown is the code run."""

import os
import re
import subprocess
import sys

from tests.helpers import repo_root

REPO = repo_root()


def _doc(name):
    with open(os.path.join(REPO, "docs", name), encoding="utf-8") as f:
        return f.read()


def test_simulator_doc_table_is_what_the_command_prints(tmp_path):
    doc = _doc("simulator.md")
    block = re.search(r"<!-- table: (.*?) -->\n(.*?)<!-- end table -->", doc, re.S)
    command, table = block.group(1), block.group(2).strip()
    assert command == "python -m experiments.delayed_quadratic"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "experiments.delayed_quadratic",
                           f"--workdir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == table
    assert os.path.exists(tmp_path / "results.json")


def test_simulator_doc_code_is_the_binary_code():
    doc = _doc("simulator.md")
    shown = re.search(r"```python\n(def make_problem.*?)```", doc, re.S).group(1).strip()
    with open(os.path.join(REPO, "experiments", "delayed_quadratic.py"), encoding="utf-8") as f:
        assert shown in f.read()
