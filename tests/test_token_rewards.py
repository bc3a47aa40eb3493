"""The jnp token rewards equal the tasks' Python rewards on many responses, malformed included."""

import jax
import numpy as np
import pytest

from async_grpo.tasks import CharTokenizer, get_task
from async_grpo.tasks.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

TOK = CharTokenizer()
WIDTH = 12


def _variants(answer: str, rng: np.random.Generator) -> list[list[int]]:
    """Token sequences around an answer: exact, padded with whitespace, leading zeros, signs,
    edits, junk, special tokens (eos/pad/bos/unk) anywhere."""
    enc = TOK.encode
    texts = [answer, " " + answer, answer + "\n", "  " + answer + " ", "0" + answer,
             "00" + answer, "-" + answer, "-0", "0", "-", "+" + answer, answer[::-1],
             answer[:-1], answer + answer[-1], answer[:1] + " " + answer[1:], "", " ", "\n\n",
             "x" + answer, answer + "x", "abc", "zyx", "01234"]
    out = [enc(t) for t in texts]
    alphabet = [c for c in "0123456789- \nabcxyz+"]
    for _ in range(40):
        n = int(rng.integers(0, WIDTH + 1))
        out.append(enc("".join(rng.choice(alphabet, size=n))))
    specials = []
    for ids in out[:10]:
        for sp in (EOS_ID, PAD_ID, BOS_ID, UNK_ID):
            pos = int(rng.integers(0, len(ids) + 1))
            specials.append(ids[:pos] + [sp] + ids[pos:])
    return out + specials


def _batch(seqs):
    tokens = np.full((len(seqs), WIDTH), PAD_ID, np.int32)
    lengths = np.zeros(len(seqs), np.int32)
    rng = np.random.default_rng(1)
    for i, s in enumerate(seqs):
        s = s[:WIDTH]
        tokens[i, :len(s)] = s
        # Sometimes garbage past the length (the sampler's padding is not guaranteed to be pad).
        if len(s) < WIDTH and i % 3 == 0:
            tokens[i, len(s):] = rng.integers(4, TOK.vocab_size, WIDTH - len(s))
        lengths[i] = len(s)
    return tokens, lengths


@pytest.mark.parametrize("name,kwargs", [("addition", {"num_digits": 3}),
                                         ("multiplication", {"num_digits": 2}),
                                         ("reverse", {"min_len": 1, "max_len": 6}),
                                         ("sort", {"min_len": 1, "max_len": 6})])
def test_token_reward_equals_python_reward(name, kwargs):
    task = get_task(name, **kwargs)
    tr = task.token_reward(TOK)
    rng = np.random.default_rng(0)
    problems, seqs = [], []
    for p in task.sample_batch(rng, 30):
        for s in _variants(p.answer, rng):
            problems.append(p)
            seqs.append(s)
    tokens, lengths = _batch(seqs)
    responses = TOK.batch_decode(tokens, lengths)
    scores = [task.score(p, r) for p, r in zip(problems, responses)]
    targets = tr.targets(problems, WIDTH)
    reward, malformed = jax.jit(tr.reward)(tokens, lengths, targets)
    expected = np.asarray([s.reward for s in scores], np.float32)
    bad = np.nonzero(np.asarray(reward) != expected)[0]
    assert bad.size == 0, [(responses[i], problems[i].answer, float(reward[i]), expected[i])
                           for i in bad[:10]]
    np.testing.assert_array_equal(np.asarray(malformed), [s.malformed for s in scores])
    assert 0.02 < expected.mean() < 0.9 and np.mean([s.malformed for s in scores]) > 0.1
    assert len(problems) > 2000


def test_tasks_without_a_token_reward():
    assert get_task("countdown").token_reward(TOK) is None
    assert get_task("addition").token_reward(TOK) is not None
