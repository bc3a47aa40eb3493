"""Multi-digit integer arithmetic: "123+456=" -> "579", "12*34=" -> "408"."""

from __future__ import annotations

import re

import numpy as np

from async_grpo.tasks.base import MALFORMED, RIGHT, WRONG, Problem, Score, Task
from async_grpo.tasks.token_rewards import IntegerAnswer, TokenReward
from async_grpo.tasks.tokenizer import CharTokenizer

_INT_RE = re.compile(r"-?\d+")


def parse_int(text: str) -> int | None:
    """Strict: optional surrounding whitespace, optional '-', digits only. Otherwise None."""
    t = text.strip()
    if not _INT_RE.fullmatch(t):
        return None
    return int(t)


def _result(problem: Problem) -> int:
    return problem.meta["result"]


class _BinaryArithmetic(Task):
    op: str = "+"

    def __init__(self, *, num_digits: int = 3, min_digits: int | None = None,
                 heldout_fraction: float = 0.1):
        super().__init__(heldout_fraction=heldout_fraction)
        min_digits = num_digits if min_digits is None else min_digits
        if not 1 <= min_digits <= num_digits:
            raise ValueError(f"need 1 <= min_digits <= num_digits, got {min_digits}, {num_digits}")
        self.num_digits = num_digits
        self.min_digits = min_digits

    def _operand(self, rng: np.random.Generator) -> int:
        d = int(rng.integers(self.min_digits, self.num_digits + 1))
        lo = 0 if d == 1 else 10**(d - 1)
        return int(rng.integers(lo, 10**d))

    def compute(self, a: int, b: int) -> int:
        raise NotImplementedError

    def generate(self, rng: np.random.Generator) -> Problem:
        a, b = self._operand(rng), self._operand(rng)
        c = self.compute(a, b)
        return Problem(prompt=f"{a}{self.op}{b}=", answer=str(c), meta={"a": a, "b": b, "result": c})

    def token_reward(self, tokenizer):
        if not isinstance(tokenizer, CharTokenizer):
            return None   # the token rewards are written for one character per token
        return TokenReward(IntegerAnswer.for_tokenizer(tokenizer), _result)

    def _score(self, problem: Problem, response: str) -> Score:
        v = parse_int(response)
        if v is None:
            return MALFORMED
        return RIGHT if v == problem.meta["result"] else WRONG

    @property
    def max_prompt_chars(self) -> int:
        return 2 * self.num_digits + 2


class Addition(_BinaryArithmetic):
    name = "addition"
    op = "+"

    def compute(self, a, b):
        return a + b

    @property
    def max_answer_chars(self) -> int:
        return self.num_digits + 1


class Multiplication(_BinaryArithmetic):
    name = "multiplication"
    op = "*"

    def compute(self, a, b):
        return a * b

    @property
    def max_answer_chars(self) -> int:
        return 2 * self.num_digits
