"""Prompt formatting, a task option: "plain" (the task's prompt text as it is) or "chat" (the
prompt as one user message rendered through the tokenizer's chat template).

`format_task(task, tokenizer, "chat")` returns a task whose problems carry the rendered prompt;
everything else (splits, keys, rewards, reference answers) is the wrapped task's, so a problem
lands in the same split and gets the same reward whatever the format.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from async_grpo.tasks.base import HELDOUT, TRAIN, Problem, Score, Task

PROMPT_FORMATS = ("plain", "chat")


class FormattedTask(Task):
    """`task` with every problem's prompt replaced by `render(prompt)`."""

    def __init__(self, task: Task, render, *, overhead_chars: int = 0):
        # No Task.__init__: the split threshold and everything else are the wrapped task's.
        self.task = task
        self.render = render
        self.name = task.name
        self.heldout_fraction = task.heldout_fraction
        self._overhead = overhead_chars

    def _wrap(self, p: Problem) -> Problem:
        return dataclasses.replace(p, prompt=self.render(p.prompt), key=p.key)

    def generate(self, rng: np.random.Generator) -> Problem:
        return self._wrap(self.task.generate(rng))

    def split_of(self, problem: Problem) -> str:
        return self.task.split_of(problem)

    def sample(self, rng, split=TRAIN, **kw) -> Problem:
        return self._wrap(self.task.sample(rng, split, **kw))

    def fixed_set(self, n, *, split=HELDOUT, seed=0, max_draws=None):
        return [self._wrap(p) for p in self.task.fixed_set(n, split=split, seed=seed,
                                                            max_draws=max_draws)]

    def pool(self, split: str):
        return [self._wrap(p) for p in self.task.pool(split)]

    def _score(self, problem: Problem, response: str) -> Score:
        return self.task._score(problem, response)  # pylint: disable=protected-access

    def token_reward(self, tokenizer):
        return None   # rendered prompts are not what the token rewards were written for

    @property
    def max_prompt_chars(self) -> int:
        return self.task.max_prompt_chars + self._overhead

    @property
    def max_answer_chars(self) -> int:
        return self.task.max_answer_chars

    def __repr__(self) -> str:
        return f"FormattedTask({self.task!r})"


def format_task(task: Task, tokenizer, prompt_format: str, *, system: str | None = None) -> Task:
    """`task` itself for "plain"; for "chat" a `FormattedTask` rendering each prompt as a user
    message with `tokenizer.render_chat` (an `HFTokenizer` with a chat template)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format={prompt_format!r}: must be one of {list(PROMPT_FORMATS)}")
    if prompt_format == "plain":
        return task
    if not hasattr(tokenizer, "render_chat"):
        raise ValueError("prompt_format='chat' needs a Hugging Face tokenizer with a chat "
                         f"template (task.tokenizer_path), got {type(tokenizer).__name__}")

    def render(text: str) -> str:
        return tokenizer.render_chat(text, system=system)

    overhead = len(render(""))
    return FormattedTask(task, render, overhead_chars=overhead)
