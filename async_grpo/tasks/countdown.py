"""Countdown: reach a target from given numbers with + - * / and parentheses.

Prompt "3,5,7>22=" ; a correct response is e.g. "3*5+7". With `use_all=True` (default) every given
number must be used exactly once; otherwise each at most once. Division must be exact in the
sense of rational arithmetic (the expression's value must equal the target exactly). Responses
are parsed by a small recursive-descent parser over Fractions (no `eval`).
"""

from __future__ import annotations

import collections
import re
from fractions import Fraction

import numpy as np

from async_grpo.tasks.base import MALFORMED, RIGHT, WRONG, Problem, Score, Task

_TOKEN_RE = re.compile(r"\s*(\d+|[-+*/()])")
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


class ExprError(ValueError):
    pass


def tokenize_expr(text: str) -> list[str]:
    tokens, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise ExprError(f"bad character at {pos}: {text[pos]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    if not tokens:
        raise ExprError("empty expression")
    return tokens


def parse_expr(text: str) -> tuple[Fraction | None, list[int]]:
    """-> (value, numbers used). Value is None on division by zero. Raises ExprError if malformed."""
    tokens = tokenize_expr(text)
    pos = 0
    numbers: list[int] = []
    div_zero = False

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def expr():
        nonlocal pos
        v = term()
        while peek() in ("+", "-"):
            op = tokens[pos]
            pos += 1
            w = term()
            v = None if v is None or w is None else (v + w if op == "+" else v - w)
        return v

    def term():
        nonlocal pos, div_zero
        v = atom()
        while peek() in ("*", "/"):
            op = tokens[pos]
            pos += 1
            w = atom()
            if v is None or w is None:
                v = None
            elif op == "*":
                v = v * w
            elif w == 0:
                div_zero, v = True, None
            else:
                v = v / w
        return v

    def atom():
        nonlocal pos
        t = peek()
        if t is None:
            raise ExprError("unexpected end")
        if t == "(":
            pos += 1
            v = expr()
            if peek() != ")":
                raise ExprError("missing ')'")
            pos += 1
            return v
        if t.isdigit():
            pos += 1
            numbers.append(int(t))
            return Fraction(int(t))
        raise ExprError(f"unexpected token {t!r}")

    value = expr()
    if pos != len(tokens):
        raise ExprError(f"trailing tokens {tokens[pos:]}")
    return (None if div_zero else value), numbers


def _render(node) -> tuple[str, int]:
    """Node = int | (op, left, right) -> (text with minimal parentheses, precedence)."""
    if isinstance(node, int):
        return str(node), 3
    op, left, right = node
    ls, lp = _render(left)
    rs, rp = _render(right)
    p = _PREC[op]
    if lp < p:
        ls = f"({ls})"
    if rp < p or (rp == p and op in "-/"):
        rs = f"({rs})"
    return f"{ls}{op}{rs}", p


class Countdown(Task):
    name = "countdown"

    def __init__(self, *, num_numbers: int = 3, max_number: int = 20, max_target: int = 100,
                 use_all: bool = True, heldout_fraction: float = 0.1):
        super().__init__(heldout_fraction=heldout_fraction)
        if num_numbers < 2:
            raise ValueError(f"num_numbers must be >= 2, got {num_numbers}")
        self.num_numbers = num_numbers
        self.max_number = max_number
        self.max_target = max_target
        self.use_all = use_all

    def generate(self, rng: np.random.Generator) -> Problem:
        while True:
            nums = [int(x) for x in rng.integers(1, self.max_number + 1, size=self.num_numbers)]
            items: list[tuple[Fraction, object]] = [(Fraction(n), n) for n in nums]
            ok = True
            while len(items) > 1:
                i, j = (int(k) for k in rng.choice(len(items), size=2, replace=False))
                (a, na), (b, nb) = items[i], items[j]
                op = "+-*/"[int(rng.integers(4))]
                if op == "-" and a < b:
                    (a, na), (b, nb) = (b, nb), (a, na)
                if op == "/" and (b == 0 or (a / b).denominator != 1):
                    op = "*"
                value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
                if value is None:
                    ok = False
                    break
                items = [it for k, it in enumerate(items) if k not in (i, j)] + [(value, (op, na, nb))]
            target, tree = items[0]
            if ok and target.denominator == 1 and 1 <= target <= self.max_target:
                break
        expr, _ = _render(tree)
        target = int(target)
        prompt = ",".join(map(str, nums)) + f">{target}="
        return Problem(prompt=prompt, answer=expr, meta={"numbers": nums, "target": target},
                       key=",".join(map(str, sorted(nums))) + f">{target}")

    def _score(self, problem: Problem, response: str) -> Score:
        try:
            value, used = parse_expr(response)
        except ExprError:
            return MALFORMED
        given = collections.Counter(problem.meta["numbers"])
        used_c = collections.Counter(used)
        if self.use_all:
            numbers_ok = used_c == given
        else:
            numbers_ok = all(used_c[k] <= given[k] for k in used_c)
        if numbers_ok and value is not None and value == problem.meta["target"]:
            return RIGHT
        return WRONG

    @property
    def max_prompt_chars(self) -> int:
        return self.num_numbers * (len(str(self.max_number)) + 1) + len(str(self.max_target)) + 1

    @property
    def max_answer_chars(self) -> int:
        # numbers + (n-1) operators + up to 2 parentheses per internal node.
        return self.num_numbers * len(str(self.max_number)) + 3 * (self.num_numbers - 1)
