"""The Hugging Face tokenizer wrapper: parity with transformers (committed reference of
tests/data/hf/tokenizer), the CharTokenizer interface, EOS/stop handling, chat prompts, and a
task's prompt -> response -> reward round trip with a tiny BPE trained here.

  PYTHONPATH=. python -m pytest -q tests/test_hf_tokenizer.py
"""

import json
import os

import numpy as np
import pytest

from async_grpo import tasks
from async_grpo.tasks import formatting, hf_tokenizer
from async_grpo.tasks.hf_tokenizer import HFTokenizer
from tests import make_hf_fixtures

TOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hf", "tokenizer")
REF = json.load(open(os.path.join(TOK_DIR, "reference.json"), encoding="utf-8"))
needs_jinja = pytest.mark.skipif(hf_tokenizer.jinja2 is None, reason="jinja2 is not installed")


def test_matches_transformers_reference():
    tok = HFTokenizer(TOK_DIR)
    assert [tok.encode(t) for t in REF["texts"]] == REF["ids"]
    assert [tok.decode(ids) for ids in REF["ids"]] == REF["decoded"]
    sp = REF["special"]
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size) == (
        sp["pad"], sp["bos"], sp["eos"], sp["unk"], sp["vocab_size"])


@needs_jinja
def test_chat_template_matches_transformers():
    tok = HFTokenizer(TOK_DIR)
    assert tok.render_chat(REF["messages"]) == REF["chat"]


def test_chat_without_jinja_or_template_is_refused_clearly(tmp_path):
    tok = HFTokenizer(TOK_DIR)
    if hf_tokenizer.jinja2 is None:
        with pytest.raises(ValueError, match="jinja2"):
            tok.render_chat("hi")
    make_hf_fixtures.train_tokenizer(str(tmp_path))
    cfg = json.load(open(tmp_path / "tokenizer_config.json"))
    del cfg["chat_template"]
    json.dump(cfg, open(tmp_path / "tokenizer_config.json", "w"))
    with pytest.raises(ValueError, match="no chat_template"):
        HFTokenizer(str(tmp_path)).render_chat("hi")
    with pytest.raises(ValueError, match="prompt_format='sms'"):
        formatting.format_task(tasks.get_task("addition"), tok, "sms")
    with pytest.raises(ValueError, match="needs a Hugging Face tokenizer"):
        formatting.format_task(tasks.get_task("addition"), tasks.CharTokenizer(), "chat")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer(str(tmp_path / "nowhere"))


def test_interface_eos_pad_and_stops():
    tok = HFTokenizer(TOK_DIR)
    ids = tok.encode("12+34=46", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    # A text already starting with bos (a rendered template) gets no second one.
    assert tok.encode("<s>12", add_bos=True).count(tok.bos_id) == 1
    # decode stops at eos; pads and anything after eos are dropped; stop_at_eos=False keeps going.
    body = tok.encode(" 46")
    row = body + [tok.eos_id] + tok.encode(" junk") + [tok.pad_id] * 3
    assert tok.decode(row) == " 46"
    assert tok.decode(row, stop_at_eos=False) == " 46 junk"
    tokens, lengths = tok.batch_encode(["1+2=", "10+20="], add_bos=True)
    assert tokens.dtype == np.int32 and tokens.shape == (2, int(lengths.max()))
    assert (tokens[0, lengths[0]:] == tok.pad_id).all()
    assert tok.batch_decode(tokens, lengths) == ["1+2=", "10+20="]
    with pytest.raises(ValueError, match="longer than max_len=2"):
        tok.batch_encode(["1+2=3456"], max_len=2)


def _responses_through_decode(tok, problems, texts):
    """The rollout path: response tokens (eos, then pad) -> batch_decode with lengths."""
    rows = [tok.encode(t) + [tok.eos_id] for t in texts]
    width = max(map(len, rows)) + 4
    tokens = np.full((len(rows), width), tok.pad_id, np.int32)
    for b, r in enumerate(rows):
        tokens[b, :len(r)] = r
        tokens[b, len(r):len(r) + 2] = tok.encode("99")[:2]   # garbage after eos is ignored
    lengths = np.asarray([len(r) for r in rows], np.int32)
    return tok.batch_decode(tokens, lengths)


@pytest.mark.parametrize("task_name", ["addition", "gsm8k"])
def test_prompt_response_reward_round_trip_with_a_trained_bpe(tmp_path, task_name):
    make_hf_fixtures.train_tokenizer(str(tmp_path / "tok"))
    tok = HFTokenizer(str(tmp_path / "tok"))
    if task_name == "gsm8k":
        path = tmp_path / "gsm8k.jsonl"
        with open(path, "w") as f:
            for i in range(20):
                f.write(json.dumps({"question": f"Tom has {i} apples and buys {i + 3} more. "
                                                "How many?",
                                    "answer": f"{i}+{i + 3}={2 * i + 3}\n#### {2 * i + 3}"}) + "\n")
        task = tasks.get_task("gsm8k", path=str(path))
    else:
        task = tasks.get_task("addition", num_digits=2)
    problems = task.fixed_set(4, split=tasks.TRAIN, seed=0)
    tokens, lengths = tok.batch_encode([p.prompt for p in problems], add_bos=True)
    assert tok.batch_decode(tokens, lengths) == [p.prompt for p in problems]
    right = _responses_through_decode(tok, problems, [p.answer for p in problems])
    rewards, stats = task.score_batch(problems, right)
    assert rewards.tolist() == [1.0] * 4 and stats["correct_frac"] == 1.0, right
    wrong = _responses_through_decode(tok, problems, [" 100000" if task_name == "addition" else
                                                      " #### 100000" for _ in problems])
    assert task.score_batch(problems, wrong)[0].tolist() == [0.0] * 4
    assert task.token_reward(tok) is None   # token rewards assume one character per token


@needs_jinja
def test_chat_format_keeps_splits_and_rewards():
    tok = HFTokenizer(TOK_DIR)
    task = tasks.get_task("addition", num_digits=2)
    chat = formatting.format_task(task, tok, "chat")
    plain = task.fixed_set(5, seed=3)
    rendered = chat.fixed_set(5, seed=3)
    for p, r in zip(plain, rendered):
        assert r.prompt == tok.render_chat(p.prompt) and r.key == p.key
        assert chat.split_of(r) == task.split_of(p) == tasks.HELDOUT
        assert chat.score(r, p.answer).reward == 1.0
    assert chat.max_prompt_chars >= max(len(r.prompt) for r in rendered)
