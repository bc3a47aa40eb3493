"""A Hugging Face tokenizer from a local directory, with `CharTokenizer`'s interface.

    tok = HFTokenizer("/path/to/Llama-3.2-1B-Instruct")      # tokenizer.json (+ tokenizer_config.json)
    tokens, lengths = tok.batch_encode(["Question: ...\\nAnswer:"])   # right-padded, bos first
    text = tok.decode(response_ids)                           # stops at the first eos / stop token

It reads `tokenizer.json` with the `tokenizers` library (no `transformers`) and the special tokens
and chat template from `tokenizer_config.json` (and `special_tokens_map.json`) where present.

Interface (the one the tasks, rollouts and SFT use): `pad_id`, `bos_id`, `eos_id`, `unk_id`,
`vocab_size`, `encode(text, add_bos=, add_eos=)`, `decode(ids, stop_at_eos=)`,
`batch_encode(texts, max_len=, add_bos=, add_eos=)`, `batch_decode(tokens, lengths)`.

Special tokens:
  * eos: the config's `eos_token` (for instruct checkpoints e.g. "<|eot_id|>" / "<|im_end|>"),
    else "</s>" / "<|endoftext|>" when the vocabulary has them. `decode` also stops at every id
    of `stop_ids` (by default eos and "<|eot_id|>", "<|im_end|>", "<|end_of_text|>",
    "<|endoftext|>" where present), so a base model's end-of-text token ends a response too.
  * pad: the config's `pad_token`, else eos (the sampler masks everything after eos, and
    `decode` drops pads).
  * bos: the config's `bos_token`, or None (Qwen2.5 has none: `add_bos` then adds nothing). A text
    that already starts with the bos string (a rendered chat template) does not get a second one.

Chat template: `render_chat(user_text)` renders the `chat_template` of tokenizer_config.json with
jinja2 in a sandbox (as transformers does), when jinja2 is installed; it is optional and not a
dependency of this package. The tasks use it through `tasks.formatting.chat_formatted` (task
option `prompt_format="chat"`); the default `prompt_format="plain"` feeds the task's prompt text
as it is and needs no jinja2.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from async_grpo.tasks.tokenizer import CharTokenizer, decode_rows, pad_batch

try:  # optional: only the chat template needs it
    import jinja2
    import jinja2.ext
    import jinja2.sandbox
except ImportError:  # pragma: no cover - depends on the environment
    jinja2 = None

_EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")
_STOP_CANDIDATES = ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>")
_PAD_CANDIDATES = ("<pad>", "<|finetune_right_pad_id|>")


def _token_str(value) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind the `CharTokenizer` interface (see the module docstring)."""

    def __init__(self, path: str, *, extra_stop_tokens: Sequence[str] = ()):
        tok_file = path if path.endswith(".json") else os.path.join(path, "tokenizer.json")
        if not os.path.exists(tok_file):
            raise FileNotFoundError(f"tokenizer path {path!r}: no tokenizer.json (a Hugging Face "
                                    "fast-tokenizer file is needed; sentencepiece *.model files "
                                    "are not read)")
        directory = os.path.dirname(tok_file)
        self.path = directory
        self._tok = Tokenizer.from_file(tok_file)
        cfg = {**_read_json(os.path.join(directory, "special_tokens_map.json")),
               **_read_json(os.path.join(directory, "tokenizer_config.json"))}
        self.chat_template = cfg.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default") or next(iter(named.values()), None)
        vocab = self._tok.get_vocab(with_added_tokens=True)

        def find(key, candidates=()):
            s = _token_str(cfg.get(key))
            if s is not None:
                if s not in vocab:
                    raise ValueError(f"{directory}: tokenizer_config.json {key}={s!r} is not in "
                                     "the vocabulary")
                return s
            return next((c for c in candidates if c in vocab), None)

        self.eos_token = find("eos_token", _EOS_CANDIDATES)
        if self.eos_token is None:
            raise ValueError(f"{directory}: no eos token (tokenizer_config.json eos_token, or one "
                             f"of {list(_EOS_CANDIDATES)} in the vocabulary); responses could "
                             "never end")
        self.bos_token = find("bos_token")
        self.pad_token = find("pad_token", _PAD_CANDIDATES) or self.eos_token
        self.unk_token = find("unk_token")
        self.eos_id = vocab[self.eos_token]
        self.pad_id = vocab[self.pad_token]
        self.bos_id = None if self.bos_token is None else vocab[self.bos_token]
        self.unk_id = None if self.unk_token is None else vocab[self.unk_token]
        stops = [self.eos_token, *(c for c in _STOP_CANDIDATES if c in vocab)]
        for s in extra_stop_tokens:
            if s not in vocab:
                raise ValueError(f"extra_stop_tokens: {s!r} is not in the vocabulary")
            stops.append(s)
        self.stop_ids = frozenset(vocab[s] for s in stops)
        self._vocab_size = max(vocab.values()) + 1

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (the model's vocab_size may be larger, never smaller)."""
        return self._vocab_size

    # --- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if add_bos and self.bos_id is not None and not (
                self.bos_token and text.startswith(self.bos_token)):
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray, *, stop_at_eos: bool = True) -> str:
        """Ids -> text: stops at the first stop token (eos, end-of-turn) if `stop_at_eos`, and
        drops special tokens (pad, bos, ...)."""
        ids = np.asarray(ids).reshape(-1).tolist()
        if stop_at_eos:
            for i, t in enumerate(ids):
                if t in self.stop_ids:
                    ids = ids[:i]
                    break
        ids = [t for t in ids if t != self.pad_id and 0 <= t < self._vocab_size]
        return self._tok.decode(ids, skip_special_tokens=True)

    def batch_encode(self, texts: Sequence[str], *, max_len: int | None = None,
                     add_bos: bool = True, add_eos: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (tokens int32 [B, L] right-padded with pad_id, lengths int32 [B]), as
        `CharTokenizer.batch_encode` (a text longer than `max_len` raises ValueError)."""
        return pad_batch(texts, [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts],
                         self.pad_id, max_len)

    def batch_decode(self, tokens: np.ndarray, lengths: np.ndarray | None = None) -> list[str]:
        return decode_rows(self.decode, tokens, lengths)

    # --- chat template --------------------------------------------------------------------------
    def render_chat(self, messages: str | Sequence[dict[str, Any]], *,
                    add_generation_prompt: bool = True, system: str | None = None) -> str:
        """The chat template rendered for `messages` (a user text, or [{"role", "content"}]).

        Raises ValueError when the tokenizer has no chat template or jinja2 is not installed."""
        if not self.chat_template:
            raise ValueError(f"{self.path}: tokenizer_config.json has no chat_template; use "
                             "prompt_format='plain'")
        if jinja2 is None:
            raise ValueError("prompt_format='chat' renders the chat template with jinja2, which "
                             "is not installed (pip install jinja2), or use prompt_format='plain'")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        return _compiled(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token,
            pad_token=self.pad_token, unk_token=self.unk_token or "")

    def __repr__(self) -> str:
        return (f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r}, "
                f"bos={self.bos_token!r}, pad={self.pad_token!r})")


_TEMPLATES: dict[str, Any] = {}


def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


def _compiled(template: str):
    if template not in _TEMPLATES:
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)  # Llama-3
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent,
                                                                       ensure_ascii=False)
        _TEMPLATES[template] = env.from_string(template)
    return _TEMPLATES[template]


def load_tokenizer(path: str = ""):
    """`HFTokenizer(path)`, or the default `CharTokenizer` when `path` is empty."""
    return HFTokenizer(path) if path else CharTokenizer()
