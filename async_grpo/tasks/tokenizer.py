"""Character-level tokenizer for the procedural tasks (and GSM8K-style text).

Ids 0..3 are special: pad=0, bos=1, eos=2, unk=3. Every other id is one character of the alphabet
(printable ASCII plus newline by default). `batch_encode` returns right-padded int32 arrays plus
lengths, the layout that `async_grpo.sampling.sample` takes for prompts.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
NUM_SPECIAL = 4

DEFAULT_ALPHABET = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")


class CharTokenizer:
    """Maps characters to ids one to one; unknown characters map to `unk_id` (or raise if strict)."""

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, alphabet: str = DEFAULT_ALPHABET, *, strict: bool = False):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet has repeated characters")
        self.alphabet = alphabet
        self.strict = strict
        self._to_id = {c: i + NUM_SPECIAL for i, c in enumerate(alphabet)}
        self._to_char = {i + NUM_SPECIAL: c for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + len(self.alphabet)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = []
        for c in text:
            i = self._to_id.get(c)
            if i is None:
                if self.strict:
                    raise ValueError(f"character {c!r} is not in the tokenizer alphabet")
                i = UNK_ID
            ids.append(i)
        if add_bos:
            ids.insert(0, BOS_ID)
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, *, stop_at_eos: bool = True) -> str:
        """Ids -> text. Skips pad/bos, stops at the first eos (if `stop_at_eos`), unk -> U+FFFD."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                if stop_at_eos:
                    break
                continue
            if i in (PAD_ID, BOS_ID):
                continue
            out.append(self._to_char.get(i, "\ufffd"))
        return "".join(out)

    def batch_encode(
        self,
        texts: Sequence[str],
        *,
        max_len: int | None = None,
        add_bos: bool = True,
        add_eos: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (tokens int32 [B, L] right-padded with pad_id, lengths int32 [B]).

        L is `max_len` if given (a text longer than that raises ValueError), else the longest text.
        """
        return pad_batch(texts, [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts],
                         PAD_ID, max_len)

    def batch_decode(self, tokens: np.ndarray, lengths: np.ndarray | None = None) -> list[str]:
        return decode_rows(self.decode, tokens, lengths)


def pad_batch(texts: Sequence[str], seqs: Sequence[Sequence[int]], pad_id: int,
              max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (tokens int32 [B, L] right-padded with `pad_id`, lengths int32 [B]); L is
    `max_len` (a longer sequence raises ValueError naming its text), else the longest. Shared by
    every tokenizer's `batch_encode`."""
    longest = max((len(q) for q in seqs), default=0)
    if max_len is None:
        max_len = max(longest, 1)
    elif longest > max_len:
        bad = max(range(len(seqs)), key=lambda k: len(seqs[k]))
        raise ValueError(
            f"text {texts[bad]!r} encodes to {longest} tokens, longer than max_len={max_len}")
    tokens = np.full((len(seqs), max_len), pad_id, dtype=np.int32)
    lengths = np.zeros((len(seqs),), dtype=np.int32)
    for b, q in enumerate(seqs):
        tokens[b, :len(q)] = q
        lengths[b] = len(q)
    return tokens, lengths


def decode_rows(decode, tokens: np.ndarray, lengths: np.ndarray | None = None) -> list[str]:
    """`decode` of each row of `tokens` (cut at `lengths` when given)."""
    tokens = np.asarray(tokens)
    if lengths is None:
        return [decode(row) for row in tokens]
    return [decode(row[:int(n)]) for row, n in zip(tokens, np.asarray(lengths))]
