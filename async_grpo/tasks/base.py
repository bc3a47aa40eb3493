"""Task interface: problems, train/held-out splits, and rewards that never raise.

Split rule (all tasks): a problem belongs to the held-out split iff
`sha256(task_name + "|" + problem.key) mod 2**32 < heldout_fraction * 2**32`. Sampling for a
split draws problems from the task's generator with a numpy Generator and rejects those whose
hash puts them in the other split, so train and held-out are disjoint by construction whatever
the seeds (the seed only picks *which* problems of a split are drawn). The key is the canonical
problem text (the prompt), so two generations of the same problem always land in the same split.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

TRAIN = "train"
HELDOUT = "heldout"
SPLITS = (TRAIN, HELDOUT)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem. `prompt` is what the policy sees; `answer` is a reference completion (SFT target).

    `key` is the canonical identity used for the split hash (defaults to the prompt); `meta`
    holds whatever the reward needs (operands, target, numbers, ...).
    """
    prompt: str
    answer: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)
    key: str = ""

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", self.prompt)


@dataclasses.dataclass(frozen=True)
class Score:
    reward: float
    correct: bool
    malformed: bool


MALFORMED = Score(0.0, False, True)
WRONG = Score(0.0, False, False)
RIGHT = Score(1.0, True, False)


def split_hash(task_name: str, key: str) -> int:
    digest = hashlib.sha256(f"{task_name}|{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


class Task:
    """Base class. Subclasses implement `generate(rng)` and `_score(problem, response)`."""

    name: str = "task"

    def __init__(self, *, heldout_fraction: float = 0.1):
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.heldout_fraction = heldout_fraction
        self._threshold = int(heldout_fraction * 2**32)

    # --- to implement -----------------------------------------------------------------------------
    def generate(self, rng: np.random.Generator) -> Problem:
        """Draws one problem from the task's distribution (either split)."""
        raise NotImplementedError

    def _score(self, problem: Problem, response: str) -> Score:
        """Scores a decoded response; may raise on malformed text (`score` catches it)."""
        raise NotImplementedError

    @property
    def max_prompt_chars(self) -> int:
        """An upper bound on len(prompt), for sizing the model context."""
        raise NotImplementedError

    @property
    def max_answer_chars(self) -> int:
        """An upper bound on len(reference answer); a sensible response-length budget."""
        raise NotImplementedError

    # --- splits -----------------------------------------------------------------------------------
    def split_of(self, problem: Problem) -> str:
        return HELDOUT if split_hash(self.name, problem.key) < self._threshold else TRAIN

    def sample(self, rng: np.random.Generator, split: str = TRAIN, *, max_tries: int = 100_000
               ) -> Problem:
        _check_split(split)
        for _ in range(max_tries):
            p = self.generate(rng)
            if self.split_of(p) == split:
                return p
        raise RuntimeError(f"{self.name}: no {split} problem found in {max_tries} draws")

    def sample_batch(self, rng: np.random.Generator, n: int, split: str = TRAIN) -> list[Problem]:
        return [self.sample(rng, split) for _ in range(n)]

    def fixed_set(self, n: int, *, split: str = HELDOUT, seed: int = 0,
                  max_draws: int | None = None) -> list[Problem]:
        """`n` distinct problems of `split`, deterministic in `seed` (e.g. the held-out eval set)."""
        _check_split(split)
        rng = np.random.default_rng(seed)
        seen: set[str] = set()
        out: list[Problem] = []
        max_draws = max_draws or 1000 * n + 100_000
        for _ in range(max_draws):
            p = self.generate(rng)
            if p.key in seen or self.split_of(p) != split:
                continue
            seen.add(p.key)
            out.append(p)
            if len(out) == n:
                return out
        raise ValueError(
            f"{self.name}: only {len(out)} distinct {split} problems found, {n} asked for")

    # --- rewards ----------------------------------------------------------------------------------
    def token_reward(self, tokenizer):
        """The reward as a jnp function of response tokens (`tasks.token_rewards.TokenReward`),
        equal to `score`'s; None when the task's answers cannot be checked on tokens."""
        del tokenizer
        return None

    def score(self, problem: Problem, response: str) -> Score:
        """Never raises: any exception while parsing the response counts as malformed (reward 0)."""
        if not isinstance(response, str):
            return MALFORMED
        try:
            s = self._score(problem, response)
        except Exception:  # pylint: disable=broad-except
            return MALFORMED
        if not isinstance(s, Score) or not np.isfinite(s.reward):
            return MALFORMED
        return s

    def reward(self, problem: Problem, response: str) -> float:
        return self.score(problem, response).reward

    def score_batch(self, problems: Sequence[Problem], responses: Sequence[str]
                    ) -> tuple[np.ndarray, dict[str, float]]:
        """-> (rewards float32 [B], {"correct_frac", "malformed_frac"})."""
        if len(problems) != len(responses):
            raise ValueError(f"{len(problems)} problems but {len(responses)} responses")
        scores = [self.score(p, r) for p, r in zip(problems, responses)]
        rewards = np.asarray([s.reward for s in scores], dtype=np.float32)
        n = max(len(scores), 1)
        stats = {
            "correct_frac": sum(s.correct for s in scores) / n,
            "malformed_frac": sum(s.malformed for s in scores) / n,
        }
        return rewards, stats

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
