"""The claims, one module each: adding a claim is adding one file.

Every module ``claim<N>_<key>.py`` of this package is a claim (found by `discover`, in the
manner of big_vision's evaluator registry: the name is the registration). A claim module defines

  NUMBER      its number N (matches the file name);
  KEY         a short name;
  STATEMENT   the claim, as the paper makes it;
  STAGES      the `experiments.reproduce` stages whose results it reads;
  GRIDS       which grids it needs, in words;
  GPU_CHANGE  what a GPU-scale run would have to show to change the verdict;
  verdict(...) -> (verdict, reason)   its rule, a pure function of a fit and its interval, with
              the thresholds as module constants; verdict is one of `base.VERDICTS`;
  rows(study) -> [{testbed, measured, interval, grid, verdict}]   its rows of the claims table
              from a loaded study (`experiments.study.load_study`).

tests/test_claims.py checks that every module found has all of these, and holds each rule's
power test (the rates under the claim and under an alternative).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

REQUIRED = ("NUMBER", "KEY", "STATEMENT", "STAGES", "GRIDS", "GPU_CHANGE", "verdict", "rows")
_NAME = re.compile(r"^claim(\d+)_\w+$")


def discover() -> dict[int, ModuleType]:
    """{N: module} of every ``claim<N>_*`` module of this package, checked."""
    out: dict[int, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        m = _NAME.match(info.name)
        if not m:
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        missing = [k for k in REQUIRED if not hasattr(mod, k)]
        if missing:
            raise TypeError(f"{mod.__name__} is a claim module without {missing}")
        if mod.NUMBER != int(m.group(1)):
            raise ValueError(f"{mod.__name__}: NUMBER = {mod.NUMBER} but the file says "
                             f"{m.group(1)}")
        if mod.NUMBER in out:
            raise ValueError(f"two modules claim number {mod.NUMBER}: "
                             f"{out[mod.NUMBER].__name__}, {mod.__name__}")
        out[mod.NUMBER] = mod
    return dict(sorted(out.items()))


def claim_rows(study) -> dict[int, list[dict]]:
    """{N: rows} of every registered claim."""
    return {n: mod.rows(study) for n, mod in discover().items()}


def summary_line(rows: list[dict]) -> str:
    """The verdicts of a claim's rows grouped by verdict, each testbed named (the text before
    its first ";"), in `base.VERDICTS` order: the sentence a reader would otherwise write by
    hand about the table, made from the table's own rows."""
    from experiments.claims.base import VERDICTS   # pylint: disable=import-outside-toplevel
    groups: dict[str, list[str]] = {v: [] for v in VERDICTS}
    for r in rows:
        v = next((v for v in VERDICTS if str(r["verdict"]).startswith(v + ":")), None)
        if v is None:
            raise ValueError(f"row verdict {r['verdict']!r} does not start with one of "
                             f"{VERDICTS}")
        groups[v].append(str(r["testbed"]).split(";")[0].strip())
    return "; ".join(f"{v} on {len(t)} ({', '.join(t)})" for v, t in groups.items() if t)


def claims_markdown(study) -> str:
    """The claims table of a loaded study, one table per registered claim, in number order."""
    out = []
    for n, mod in discover().items():
        rows = mod.rows(study)
        out.append(f"**Claim {n}.** {mod.STATEMENT}\n")
        if not rows:
            out.append("Not measured at this scale (no results in this study directory).\n")
        else:
            out.append("| testbed (regime) | measured | interval (what it covers) | grid, horizon |"
                       " verdict at this scale |")
            out.append("| --- | --- | --- | --- | --- |")
            for r in rows:
                cells = [str(r[c]).replace("|", "\\|") for c in
                         ("testbed", "measured", "interval", "grid", "verdict")]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
            out.append(f"In one line (from the rows above): {summary_line(rows)}.\n")
        out.append(f"What a GPU-scale run would have to show to change this verdict: "
                   f"{mod.GPU_CHANGE}.\n")
    return "\n".join(out)
