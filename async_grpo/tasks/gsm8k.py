"""GSM8K-format JSONL: one {"question": ..., "answer": "... #### 42"} object per line.

Nothing is downloaded: point `path` (and optionally `heldout_path`) at local files. Without a
`heldout_path` the problems of `path` are split by the hash of the question (see `base.py`).

Answers are compared as exact rationals after normalization: "1,234" -> "1234", "$5" -> "5",
"3.0" -> "3", "-7" -> "-7", "12%" -> "12", trailing "." dropped. A model response is scored on
the number after its last "####"; with `fallback_last_number=True` a response without "####"
is scored on its last number instead (default: no "####" is malformed, reward 0).
"""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction

import numpy as np

from async_grpo.tasks.base import (HELDOUT, MALFORMED, RIGHT, TRAIN, WRONG, Problem, Score, Task,
                                   _check_split)

_NUM_RE = re.compile(r"-?\s*\$?\s*-?\d[\d,]*(?:\.\d+)?|-?\s*\$?\s*-?\.\d+")
_CLEAN_RE = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")


def normalize_number(text: str | None) -> str | None:
    """Canonical string of a number ("1,234.50" -> "1234.5", "$5" -> "5"), or None if not one."""
    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    t = t.rstrip(".").removesuffix("%")
    if t.startswith("--"):
        return None
    if not _CLEAN_RE.fullmatch(t):
        return None
    v = Fraction(t)
    if v.denominator == 1:
        return str(v.numerator)
    s = format(float(v), ".10f").rstrip("0").rstrip(".")
    return s


def extract_answer(text: str, *, fallback_last_number: bool = False) -> str | None:
    """Normalized number after the last '####' (or the last number, if allowed), else None."""
    if not isinstance(text, str):
        return None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
        m = _NUM_RE.search(tail)
        return normalize_number(m.group(0)) if m else None
    if fallback_last_number:
        nums = _NUM_RE.findall(text)
        return normalize_number(nums[-1]) if nums else None
    return None


def format_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def load_gsm8k_jsonl(path: str) -> list[Problem]:
    """Reads a GSM8K-format file. Raises ValueError naming the line for a bad record."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"GSM8K file not found: {path}")
    problems = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                question, answer = rec["question"], rec["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a {{question, answer}} JSON object ({e})") from e
            final = extract_answer(answer)
            if final is None:
                raise ValueError(f"{path}:{lineno}: answer has no '#### <number>' line: {answer[-60:]!r}")
            problems.append(Problem(prompt=format_prompt(question), answer=" " + answer.strip(),
                                    meta={"final": final, "question": question}, key=question.strip()))
    return problems


class GSM8K(Task):
    name = "gsm8k"

    def __init__(self, *, path: str, heldout_path: str | None = None,
                 heldout_fraction: float = 0.1, fallback_last_number: bool = False):
        super().__init__(heldout_fraction=heldout_fraction)
        self.fallback_last_number = fallback_last_number
        problems = load_gsm8k_jsonl(path)
        if heldout_path is None:
            self._pools = {TRAIN: [p for p in problems if Task.split_of(self, p) == TRAIN],
                           HELDOUT: [p for p in problems if Task.split_of(self, p) == HELDOUT]}
        else:
            held = load_gsm8k_jsonl(heldout_path)
            held_keys = {p.key for p in held}
            self._pools = {TRAIN: [p for p in problems if p.key not in held_keys], HELDOUT: held}
        self._split_of_key = {p.key: s for s, ps in self._pools.items() for p in ps}

    def split_of(self, problem: Problem) -> str:
        return self._split_of_key.get(problem.key, super().split_of(problem))

    def pool(self, split: str) -> list[Problem]:
        _check_split(split)
        return self._pools[split]

    def generate(self, rng: np.random.Generator) -> Problem:
        everything = self._pools[TRAIN] + self._pools[HELDOUT]
        return everything[int(rng.integers(len(everything)))]

    def sample(self, rng, split=TRAIN, *, max_tries=0):
        pool = self.pool(split)
        if not pool:
            raise ValueError(f"gsm8k: the {split} split is empty")
        return pool[int(rng.integers(len(pool)))]

    def fixed_set(self, n, *, split=HELDOUT, seed=0, max_draws=None):
        pool = self.pool(split)
        if n > len(pool):
            raise ValueError(f"gsm8k: {n} {split} problems asked for, the split has {len(pool)}")
        idx = np.random.default_rng(seed).permutation(len(pool))[:n]
        return [pool[int(i)] for i in idx]

    def _score(self, problem: Problem, response: str) -> Score:
        got = extract_answer(response, fallback_last_number=self.fallback_last_number)
        if got is None:
            return MALFORMED
        return RIGHT if Fraction(got) == Fraction(problem.meta["final"]) else WRONG

    @property
    def max_prompt_chars(self) -> int:
        return max(len(p.prompt) for ps in self._pools.values() for p in ps)

    @property
    def max_answer_chars(self) -> int:
        return max(len(p.answer) for ps in self._pools.values() for p in ps)
