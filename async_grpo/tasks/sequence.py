"""String reversal ("rev:abcde=" -> "edcba") and digit sorting ("sort:53918=" -> "13589")."""

from __future__ import annotations

import string

import numpy as np

from async_grpo.tasks.base import MALFORMED, RIGHT, WRONG, Problem, Score, Task
from async_grpo.tasks.token_rewards import ExactString, TokenReward
from async_grpo.tasks.tokenizer import CharTokenizer


def _answer(problem: Problem) -> str:
    return problem.answer


class _SequenceTask(Task):
    alphabet: str = ""
    tag: str = ""

    def __init__(self, *, min_len: int = 3, max_len: int = 8, heldout_fraction: float = 0.1):
        super().__init__(heldout_fraction=heldout_fraction)
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
        self.min_len, self.max_len = min_len, max_len

    def transform(self, s: str) -> str:
        raise NotImplementedError

    def generate(self, rng: np.random.Generator) -> Problem:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        s = "".join(self.alphabet[int(i)] for i in rng.integers(len(self.alphabet), size=n))
        return Problem(prompt=f"{self.tag}:{s}=", answer=self.transform(s), meta={"input": s})

    def token_reward(self, tokenizer):
        if not isinstance(tokenizer, CharTokenizer):
            return None   # the token rewards are written for one character per token
        return TokenReward(ExactString.for_tokenizer(tokenizer, self.alphabet), _answer)

    def _score(self, problem: Problem, response: str) -> Score:
        r = response.strip()
        if not r or any(c not in self.alphabet for c in r):
            return MALFORMED
        return RIGHT if r == problem.answer else WRONG

    @property
    def max_prompt_chars(self) -> int:
        return len(self.tag) + self.max_len + 2

    @property
    def max_answer_chars(self) -> int:
        return self.max_len


class Reverse(_SequenceTask):
    name = "reverse"
    alphabet = string.ascii_lowercase
    tag = "rev"

    def transform(self, s):
        return s[::-1]


class Sort(_SequenceTask):
    name = "sort"
    alphabet = string.digits
    tag = "sort"

    def transform(self, s):
        return "".join(sorted(s))
