"""Tasks: generation, disjoint splits, rewards (correct / wrong / malformed), tokenizer, GSM8K."""

import json

import numpy as np
import pytest

from async_grpo import tasks as T
from async_grpo.tasks import HELDOUT, TRAIN, CharTokenizer, get_task

PROCEDURAL = ["addition", "multiplication", "countdown", "reverse", "sort"]


@pytest.mark.parametrize("name", PROCEDURAL)
def test_reference_answers_are_correct_and_splits_disjoint(name):
    task = get_task(name)
    rng = np.random.default_rng(0)
    train = task.sample_batch(rng, 300, TRAIN)
    held = task.fixed_set(200, split=HELDOUT, seed=1)
    assert len({p.key for p in held}) == 200
    assert all(task.split_of(p) == TRAIN for p in train)
    assert all(task.split_of(p) == HELDOUT for p in held)
    assert not {p.key for p in train} & {p.key for p in held}
    for p in train[:50] + held[:50]:
        s = task.score(p, p.answer)
        assert (s.reward, s.correct, s.malformed) == (1.0, True, False), (p, s)
        assert len(p.prompt) <= task.max_prompt_chars
        assert len(p.answer) <= task.max_answer_chars
    # Deterministic in the seed.
    assert [p.key for p in task.fixed_set(200, seed=1)] == [p.key for p in held]


@pytest.mark.parametrize("name", PROCEDURAL)
@pytest.mark.parametrize("junk", ["", "   ", "\ufffd\ufffd", "1+", "((", "abc!", None, 12,
                                  "9" * 5000, "#### 5", "\x00"])
def test_malformed_never_raises(name, junk):
    task = get_task(name)
    p = task.sample(np.random.default_rng(3))
    s = task.score(p, junk)
    assert s.reward == 0.0 and not s.correct


def test_addition_rewards():
    task = get_task("addition", num_digits=3)
    p = T.Problem(prompt="123+456=", answer="579", meta={"result": 579})
    assert task.score(p, "579").reward == 1.0
    assert task.score(p, " 579 ").reward == 1.0
    assert task.score(p, "578") == T.base.WRONG
    assert task.score(p, "57 9").malformed
    assert task.score(p, "579=").malformed
    assert task.score(p, "").malformed
    rewards, stats = task.score_batch([p] * 4, ["579", "1", "x", ""])
    np.testing.assert_array_equal(rewards, [1, 0, 0, 0])
    assert stats == {"correct_frac": 0.25, "malformed_frac": 0.5}
    with pytest.raises(ValueError, match="2 responses"):
        task.score_batch([p] * 3, ["1", "2"])


def test_multiplication_rewards():
    task = get_task("multiplication", num_digits=2)
    p = task.generate(np.random.default_rng(0))
    a, b = p.meta["a"], p.meta["b"]
    assert p.prompt == f"{a}*{b}="
    assert task.reward(p, str(a * b)) == 1.0
    assert task.reward(p, str(a * b + 1)) == 0.0
    assert task.score(p, "-").malformed


def test_countdown_rewards():
    task = get_task("countdown")
    p = T.Problem(prompt="3,5,7>22=", answer="3*5+7", meta={"numbers": [3, 5, 7], "target": 22})
    assert task.reward(p, "3*5+7") == 1.0
    assert task.reward(p, "7+5*3") == 1.0
    assert task.reward(p, "(7+5*3)") == 1.0
    assert task.score(p, "3*5+8") == T.base.WRONG           # wrong value and number
    assert task.score(p, "15+7") == T.base.WRONG            # numbers not the given ones
    assert task.score(p, "3*5+7+0") == T.base.WRONG         # extra number
    assert task.score(p, "3/(5-5)+7") == T.base.WRONG       # division by zero: well formed, 0
    assert task.score(p, "3*5+").malformed
    assert task.score(p, "3*5+7)").malformed
    assert task.score(p, "-3*5+7").malformed
    assert task.score(p, "3x5+7").malformed
    # Rational arithmetic: 7/(3/5)... not an integer target; exact fractions are respected.
    q = T.Problem(prompt="6,4,3>8=", answer="6/3*4", meta={"numbers": [6, 4, 3], "target": 8})
    assert task.reward(q, "6/3*4") == 1.0
    assert task.reward(q, "4/3*6") == 1.0
    lax = get_task("countdown", use_all=False)
    assert lax.reward(p, "3*5+7") == 1.0
    p2 = T.Problem(prompt="3,5,7>15=", answer="3*5", meta={"numbers": [3, 5, 7], "target": 15})
    assert lax.reward(p2, "3*5") == 1.0 and task.reward(p2, "3*5") == 0.0
    assert lax.reward(p2, "3*5*1") == 0.0


def test_countdown_parser():
    value, used = T.parse_expr("(1+2)*3-4/2")
    assert value == 7 and used == [1, 2, 3, 4, 2]
    assert T.parse_expr("8-(3-1)")[0] == 6
    assert T.parse_expr("8/(4/2)")[0] == 4


def test_sequence_rewards():
    rev = get_task("reverse", min_len=3, max_len=5)
    p = T.Problem(prompt="rev:abc=", answer="cba")
    assert rev.reward(p, "cba") == 1.0
    assert rev.score(p, "abc") == T.base.WRONG
    assert rev.score(p, "cb4").malformed
    srt = get_task("sort")
    q = T.Problem(prompt="sort:312=", answer="123")
    assert srt.reward(q, "123") == 1.0
    assert srt.score(q, "132") == T.base.WRONG
    assert srt.score(q, "12a").malformed


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*addition.*countdown"):
        get_task("nope")
    with pytest.raises(ValueError, match="bad arguments for task 'addition'"):
        get_task("addition", digits=3)
    with pytest.raises(ValueError, match="unknown split"):
        get_task("addition").sample(np.random.default_rng(0), "test")


def test_tokenizer_roundtrip_and_batch():
    tok = CharTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    text = "123+456=579 #### $1,234.5\nrev:abc"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == text
    assert max(ids) < tok.vocab_size
    assert tok.decode(tok.encode("ab") + [tok.eos_id] + tok.encode("cd")) == "ab"
    assert tok.decode([tok.encode("a")[0], tok.pad_id, tok.pad_id]) == "a"
    assert tok.decode(tok.encode("é")) == "\ufffd"
    with pytest.raises(ValueError, match="not in the tokenizer alphabet"):
        CharTokenizer(strict=True).encode("é")
    tokens, lengths = tok.batch_encode(["1+2=", "10+20="])
    assert tokens.dtype == np.int32 and tokens.shape == (2, 7)
    np.testing.assert_array_equal(lengths, [5, 7])
    assert tokens[0, 5:].tolist() == [tok.pad_id] * 2
    assert tok.batch_decode(tokens, lengths) == ["1+2=", "10+20="]
    tokens, _ = tok.batch_encode(["1+2="], max_len=9)
    assert tokens.shape == (1, 9)
    with pytest.raises(ValueError, match="longer than max_len=4"):
        tok.batch_encode(["10+20="], max_len=4)


@pytest.mark.parametrize("text,want", [
    ("1,234", "1234"), ("$5", "5"), ("3.0", "3"), ("-7", "-7"), ("-3.50", "-3.5"),
    ("12%", "12"), ("5.", "5"), (" 42 ", "42"), ("$1,000.00", "1000"), (".5", "0.5"),
    ("abc", None), ("", None), ("1.2.3", None), ("--3", None), (None, None),
])
def test_gsm8k_normalize(text, want):
    assert T.normalize_number(text) == want


@pytest.mark.parametrize("text,want", [
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("so the total is\n#### 1,234", "1234"),
    ("#### $5", "5"),
    ("#### -12", "-12"),
    ("#### 3.0 dollars", "3"),
    ("#### 1\nmore #### 2", "2"),
    ("the answer is 17", None),
    ("####", None),
    ("#### many", None),
])
def test_gsm8k_extract(text, want):
    assert T.extract_answer(text) == want


def test_gsm8k_extract_fallback():
    assert T.extract_answer("first 3 then 17.", fallback_last_number=True) == "17"
    assert T.extract_answer("no numbers", fallback_last_number=True) is None


def _write_gsm8k(path, n, start=0):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"question": f"Tom has {i} apples and buys {i} more. How many?",
                                "answer": f"He has {i}+{i}=<<{i}+{i}={2*i}>>{2*i} apples.\n"
                                          f"#### {2*i:,}"}) + "\n")
            if i == start:
                f.write("\n")  # blank lines are skipped


def test_gsm8k_loader_and_rewards(tmp_path):
    path = tmp_path / "train.jsonl"
    _write_gsm8k(path, 600, start=1000)
    probs = T.load_gsm8k_jsonl(str(path))
    assert len(probs) == 600
    p = probs[0]
    assert p.meta["final"] == "2000"
    assert p.prompt.startswith("Question: Tom has 1000") and p.prompt.endswith("Answer:")
    task = get_task("gsm8k", path=str(path))
    train, held = task.pool(TRAIN), task.pool(HELDOUT)
    assert len(train) + len(held) == 600 and 20 < len(held) < 120
    assert not {q.key for q in train} & {q.key for q in held}
    q = held[0]
    final = q.meta["final"]
    assert task.reward(q, q.answer) == 1.0
    assert task.reward(q, f"blah #### {int(final):,}") == 1.0
    assert task.reward(q, f"#### ${final}.00") == 1.0
    assert task.score(q, "#### 1") == T.base.WRONG
    assert task.score(q, f"the answer is {final}").malformed      # missing ####
    assert get_task("gsm8k", path=str(path), fallback_last_number=True).reward(
        q, f"the answer is {final}") == 1.0
    assert task.score(q, "#### ").malformed
    assert len(task.fixed_set(20, seed=0)) == 20
    assert task.split_of(task.sample(np.random.default_rng(0), HELDOUT)) == HELDOUT
    with pytest.raises(ValueError, match="asked for"):
        task.fixed_set(10_000)


def test_gsm8k_heldout_file_and_bad_files(tmp_path):
    _write_gsm8k(tmp_path / "a.jsonl", 30)
    _write_gsm8k(tmp_path / "b.jsonl", 10, start=25)  # overlaps a.jsonl on 5 questions
    task = get_task("gsm8k", path=str(tmp_path / "a.jsonl"),
                    heldout_path=str(tmp_path / "b.jsonl"))
    assert len(task.pool(HELDOUT)) == 10 and len(task.pool(TRAIN)) == 25
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: answer has no '####"):
        T.load_gsm8k_jsonl(str(bad))
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        T.load_gsm8k_jsonl(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        get_task("gsm8k", path=str(tmp_path / "missing.jsonl"))
