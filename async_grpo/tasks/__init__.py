"""Verifiable tasks: procedural arithmetic, Countdown, reversal/sorting, and GSM8K-format files.

`get_task(name, **kwargs)` builds a task by name; every task has `sample(rng, split)`,
`fixed_set(n, split=..., seed=...)`, `score(problem, response)` (never raises) and
`score_batch(problems, responses)`. See `base.py` for how train/held-out splits are kept disjoint.
"""

from async_grpo.tasks.arithmetic import Addition, Multiplication, parse_int
from async_grpo.tasks.base import HELDOUT, SPLITS, TRAIN, Problem, Score, Task, split_hash
from async_grpo.tasks.countdown import Countdown, parse_expr
from async_grpo.tasks.formatting import PROMPT_FORMATS, FormattedTask, format_task
from async_grpo.tasks.gsm8k import GSM8K, extract_answer, load_gsm8k_jsonl, normalize_number
from async_grpo.tasks.hf_tokenizer import HFTokenizer, load_tokenizer
from async_grpo.tasks.sequence import Reverse, Sort
from async_grpo.tasks.tokenizer import (BOS_ID, EOS_ID, PAD_ID, UNK_ID, CharTokenizer)

TASKS = {
    "addition": Addition,
    "multiplication": Multiplication,
    "countdown": Countdown,
    "reverse": Reverse,
    "sort": Sort,
    "gsm8k": GSM8K,
}


def get_task(name: str, **kwargs) -> Task:
    """Builds a task by name. Unknown name -> ValueError listing the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    try:
        return TASKS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for task {name!r}: {e}") from e


__all__ = [
    "Addition", "Multiplication", "Countdown", "Reverse", "Sort", "GSM8K", "Task", "Problem",
    "Score", "TRAIN", "HELDOUT", "SPLITS", "TASKS", "get_task", "CharTokenizer", "PAD_ID",
    "BOS_ID", "EOS_ID", "UNK_ID", "extract_answer", "normalize_number", "load_gsm8k_jsonl",
    "parse_expr", "parse_int", "split_hash", "HFTokenizer", "load_tokenizer", "PROMPT_FORMATS",
    "FormattedTask", "format_task",
]
