"""Rewards computed on response tokens with jnp, inside a compiled program.

For the tasks whose answers can be checked on tokens (addition, multiplication, reversal,
sorting) `task.token_reward(tokenizer)` returns a `TokenReward`: `targets(problems)` turns the
problems into arrays on the host (once, before the program runs), and `reward(tokens, lengths,
targets)` is a pure, jittable function of the sampler's output that equals the task's Python
reward (`task.score`) on every response, malformed ones included
(`tests/test_token_rewards.py` checks it on many generated responses). Countdown and GSM8K have
no token reward (`token_reward` returns None).

The response text is what `CharTokenizer.batch_decode` gives: the first `length` tokens, cut at
the first eos, with pad and bos tokens skipped; unknown ids decode to a character that is neither
a digit nor whitespace nor in any task alphabet. `strip` removes the same whitespace Python's
`str.strip` removes (of the tokenizer's alphabet: space and newline).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from async_grpo.tasks.tokenizer import BOS_ID, EOS_ID, PAD_ID, CharTokenizer


def _ids(tokenizer: CharTokenizer, chars: str) -> np.ndarray:
    return np.asarray([tokenizer.encode(c)[0] for c in chars], np.int32)


def compact_and_strip(tokens, lengths, whitespace_ids):
    """-> (chars [B, N]: the decoded, stripped response's ids left-aligned (pad after),
    n [B]: its length). Pure jnp."""
    tokens = jnp.asarray(tokens, jnp.int32)
    b, n = tokens.shape
    pos = jnp.arange(n)[None, :]
    is_eos = tokens == EOS_ID
    first_eos = jnp.where(is_eos.any(1), jnp.argmax(is_eos, 1), n)
    kept = (pos < jnp.asarray(lengths)[:, None]) & (pos < first_eos[:, None]) \
        & (tokens != PAD_ID) & (tokens != BOS_ID)
    # Strip: drop the kept whitespace before the first and after the last kept non-space.
    ws = jnp.isin(tokens, jnp.asarray(whitespace_ids))
    solid = kept & ~ws
    has = solid.any(1)
    lo = jnp.where(has, jnp.argmax(solid, 1), n)
    hi = jnp.where(has, n - 1 - jnp.argmax(solid[:, ::-1], 1), -1)
    kept = kept & (pos >= lo[:, None]) & (pos <= hi[:, None])
    dest = jnp.cumsum(kept, 1) - 1
    dest = jnp.where(kept, dest, n)                       # dropped tokens go out of range
    chars = jnp.full((b, n + 1), PAD_ID, jnp.int32)
    chars = chars.at[jnp.arange(b)[:, None], dest].set(tokens, mode="drop")[:, :n]
    return chars, kept.sum(1)


@dataclasses.dataclass(frozen=True)
class IntegerAnswer:
    """`-?\\d+` after stripping, compared as an integer with a non-negative target
    (addition, multiplication: `parse_int`)."""

    digit_ids: tuple
    minus_id: int
    whitespace_ids: tuple

    @classmethod
    def for_tokenizer(cls, tokenizer: CharTokenizer) -> "IntegerAnswer":
        return cls(tuple(_ids(tokenizer, "0123456789").tolist()), int(_ids(tokenizer, "-")[0]),
                   tuple(_ids(tokenizer, " \n").tolist()))

    def targets(self, results: Sequence[int], width: int) -> dict[str, np.ndarray]:
        """The targets' digits as token ids (most significant first), left-aligned."""
        text = [str(int(r)) for r in results]
        if any(t.startswith("-") for t in text):
            raise ValueError("IntegerAnswer targets must be >= 0")
        width = max(width, max(len(t) for t in text))
        digits = np.full((len(text), width), PAD_ID, np.int32)
        for i, t in enumerate(text):
            digits[i, :len(t)] = [self.digit_ids[int(c)] for c in t]
        return {"digits": digits, "num_digits": np.asarray([len(t) for t in text], np.int32)}

    def reward(self, tokens, lengths, targets):
        """-> (reward float32 [B]: 1 iff the integer equals the target, malformed bool [B])."""
        chars, n = compact_and_strip(tokens, lengths, self.whitespace_ids)
        b, width = chars.shape
        pos = jnp.arange(width)[None, :]
        inside = pos < n[:, None]
        digit_ids = jnp.asarray(self.digit_ids)
        is_digit = jnp.isin(chars, digit_ids)
        neg = chars[:, 0] == self.minus_id
        start = neg.astype(jnp.int32)
        body = inside & (pos >= start[:, None])
        well_formed = (n > start) & jnp.all(~body | is_digit, axis=1)
        # Significant digits: drop leading zeros (keep one "0" if all are zeros).
        zero = chars == digit_ids[0]
        nonzero_body = body & ~zero
        any_nonzero = nonzero_body.any(1)
        first_sig = jnp.where(any_nonzero, jnp.argmax(nonzero_body, 1), n - 1)
        sig_len = n - first_sig
        tgt, tgt_len = jnp.asarray(targets["digits"]), jnp.asarray(targets["num_digits"])
        d = tgt.shape[1]
        idx = jnp.clip(first_sig[:, None] + jnp.arange(d)[None, :], 0, width - 1)
        shifted = jnp.take_along_axis(chars, idx, axis=1)
        within = jnp.arange(d)[None, :] < tgt_len[:, None]
        same = (sig_len == tgt_len) & jnp.all(~within | (shifted == tgt), axis=1)
        correct = well_formed & same & (~neg | ~any_nonzero)
        return correct.astype(jnp.float32), ~well_formed


@dataclasses.dataclass(frozen=True)
class ExactString:
    """The stripped response must be non-empty, use only `alphabet`, and equal the answer
    (reversal, sorting)."""

    alphabet_ids: tuple
    whitespace_ids: tuple
    tokenizer: CharTokenizer = dataclasses.field(compare=False, hash=False, repr=False)

    @classmethod
    def for_tokenizer(cls, tokenizer: CharTokenizer, alphabet: str) -> "ExactString":
        return cls(tuple(_ids(tokenizer, alphabet).tolist()),
                   tuple(_ids(tokenizer, " \n").tolist()), tokenizer)

    def targets(self, answers: Sequence[str], width: int) -> dict[str, np.ndarray]:
        width = max(width, max(len(a) for a in answers))
        ids = np.full((len(answers), width), PAD_ID, np.int32)
        for i, a in enumerate(answers):
            ids[i, :len(a)] = self.tokenizer.encode(a)
        return {"answer": ids, "answer_len": np.asarray([len(a) for a in answers], np.int32)}

    def reward(self, tokens, lengths, targets):
        chars, n = compact_and_strip(tokens, lengths, self.whitespace_ids)
        width = chars.shape[1]
        inside = jnp.arange(width)[None, :] < n[:, None]
        in_alphabet = jnp.isin(chars, jnp.asarray(self.alphabet_ids))
        malformed = (n == 0) | ~jnp.all(~inside | in_alphabet, axis=1)
        ans, ans_len = jnp.asarray(targets["answer"]), jnp.asarray(targets["answer_len"])
        a = ans.shape[1]
        cmp_width = min(a, width)
        within = jnp.arange(cmp_width)[None, :] < ans_len[:, None]
        same = (n == ans_len) & jnp.all(~within | (chars[:, :cmp_width] == ans[:, :cmp_width]),
                                        axis=1)
        # An answer longer than the response budget can never be matched.
        same = same & (ans_len <= width)
        return (same & ~malformed).astype(jnp.float32), malformed


@dataclasses.dataclass(frozen=True)
class TokenReward:
    """A task's reward on tokens: `targets(problems, width)` on the host, then the pure
    `reward(tokens, lengths, targets) -> (reward [B], malformed [B])`."""

    checker: Any                                  # IntegerAnswer | ExactString
    answer_of: Callable[[Any], Any]               # problem -> its integer result or answer text

    def targets(self, problems, width: int) -> dict[str, np.ndarray]:
        return self.checker.targets([self.answer_of(p) for p in problems], width)

    def reward(self, tokens, lengths, targets):
        return self.checker.reward(tokens, lengths, targets)
