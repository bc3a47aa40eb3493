r"""Makes the golden Hugging Face fixtures of tests/data/hf/ with `transformers` + CPU torch.

  python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers safetensors \
      tokenizers numpy            # or: pip install -e '.[hf]'
  /tmp/hfvenv/bin/python tests/make_hf_fixtures.py [--out=tests/data/hf]

Writes, per model family (`FAMILIES`), a tiny random checkpoint saved by `save_pretrained`
(<out>/<family>/config.json, model.safetensors) and <out>/<family>/reference.npz with:

  tokens, mask, positions   [3, T] a random batch: row 0 full, row 1 left-padded, row 2 right-padded
                            (positions = cumsum(mask) - 1, as HF generate uses them)
  logits                    [3, T, V] float32 HF logits (eager attention) of that batch
  prompt_tokens, prompt_lengths  [3, P] right-padded prompts (HF is given them left-padded)
  greedy_tokens, greedy_logp     [3, 32] HF greedy continuation and log_softmax(logits)[token]
  greedy_logits                  [3, 32, V] the raw logits of each greedy step
  sample_tokens, sample_logp     [3, 32] HF sampled continuation at temperature 0.7 (no top-k/p)
                                 and its log_softmax(logits / 0.7)[token]

Families: llama3_untied (llama3 rope scaling, original_max_position_embeddings=32 < the 48 and
56 positions used; with head_dim 8 and θ=1e4 its four wavelengths 6.3, 63, 628, 6283 fall in the
kept, smoothed, scaled and scaled bands of low/high_freq_factor 0.5/4; GQA 4/2, untied head, config.json in the rope_parameters layout current
transformers writes), llama_tied (default rope, MQA 4/1, tied, config.json rewritten to the
published rope_theta/rope_scaling layout), qwen2_tied (q/k/v biases, tied). All weights are
re-drawn with std 0.1 (norm scales 1 + 0.1·N, biases 0.1·N) so that no part is trivially 0 or 1.

Also <out>/tokenizer/: a tiny byte-level BPE trained with `tokenizers` (tokenizer.json,
tokenizer_config.json with a chat template) and <out>/tokenizer/reference.json: the ids
`transformers.AutoTokenizer` gives some texts, and the chat-template renderings.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

FAMILIES = ("llama3_untied", "llama_tied", "qwen2_tied")
VOCAB = 64
SEQ = 48          # logits batch length; positions reach 47 > original_max_position_embeddings=32
PROMPT = 24       # prompt width; + 32 new tokens reaches position 55
NEW = 32
TEMPERATURE = 0.7
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
TOKENIZER_TEXTS = [
    "Question: Natalia sold clips to 48 of her friends in April. How many?\nAnswer:",
    " She sold 48/2 = 24 clips in May. #### 72",
    "12+34=46",
    "héllo wörld ∑ 3.5%",
]
CHAT_MESSAGES = [{"role": "user", "content": "What is 2+3?"}]


def _hf_config(family: str):
    import transformers  # pylint: disable=import-outside-toplevel

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, head_dim=8, max_position_embeddings=128,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  attn_implementation="eager")
    if family == "llama3_untied":
        return transformers.LlamaConfig(
            **common, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.5,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    if family == "llama_tied":
        return transformers.LlamaConfig(**common, num_key_value_heads=1, tie_word_embeddings=True,
                                        rope_theta=500.0)
    if family == "qwen2_tied":
        return transformers.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True,
                                        rope_theta=1_000_000.0, use_sliding_window=False)
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


def _published_layout(cfg_path: str) -> None:
    """Rewrites config.json to the rope_theta/rope_scaling layout of published checkpoints."""
    with open(cfg_path, encoding="utf-8") as f:
        c = json.load(f)
    params = c.pop("rope_parameters", None) or {}
    if params:
        c["rope_theta"] = params.pop("rope_theta", c.get("rope_theta"))
        c["rope_scaling"] = None if params.get("rope_type", "default") == "default" else params
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(c, f, indent=2)


def make_model(family: str, out: str, seed: int = 0) -> None:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    torch.manual_seed(seed)
    cls = (transformers.Qwen2ForCausalLM if family.startswith("qwen2")
           else transformers.LlamaForCausalLM)
    model = cls(_hf_config(family)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    path = os.path.join(out, family)
    model.save_pretrained(path, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(path, extra)):
            os.remove(os.path.join(path, extra))
    if family == "llama_tied":
        _published_layout(os.path.join(path, "config.json"))
    np.savez(os.path.join(path, "reference.npz"), **reference(model, seed))


def reference(model, seed: int) -> dict[str, np.ndarray]:
    import torch  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, VOCAB, size=(3, SEQ)).astype(np.int64)
    mask = np.ones((3, SEQ), np.int64)
    mask[1, :7] = 0          # left padding
    mask[2, SEQ - 11:] = 0   # right padding
    tokens[mask == 0] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(positions)).logits.float().numpy()

    lengths = np.array([PROMPT, 19, 13])
    prompts = rng.integers(3, VOCAB, size=(3, PROMPT)).astype(np.int64)
    right = np.where(np.arange(PROMPT)[None] < lengths[:, None], prompts, 0)
    left = np.zeros_like(right)
    for b, n in enumerate(lengths):
        left[b, PROMPT - n:] = right[b, :n]
    left_mask = (np.arange(PROMPT)[None] >= (PROMPT - lengths)[:, None]).astype(np.int64)
    kw = dict(input_ids=torch.tensor(left), attention_mask=torch.tensor(left_mask),
              max_new_tokens=NEW, min_new_tokens=NEW, eos_token_id=None, pad_token_id=0,
              output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        greedy = model.generate(**kw, do_sample=False)
        torch.manual_seed(seed + 1)
        sampled = model.generate(**kw, do_sample=True, temperature=TEMPERATURE, top_k=0,
                                 top_p=1.0)

    def picked(out, temperature):
        toks = out.sequences[:, PROMPT:]
        logits = torch.stack(out.logits, dim=1).float()
        logp = torch.log_softmax(logits / temperature, dim=-1)
        return (toks.numpy().astype(np.int32),
                torch.gather(logp, -1, toks[..., None])[..., 0].numpy(), logits.numpy())

    g_tok, g_lp, g_logits = picked(greedy, 1.0)
    s_tok, s_lp, _ = picked(sampled, TEMPERATURE)
    assert g_tok.shape == (3, NEW) and s_tok.shape == (3, NEW)
    return dict(tokens=tokens.astype(np.int32), mask=mask.astype(bool),
                positions=positions.astype(np.int32), logits=logits,
                prompt_tokens=right.astype(np.int32), prompt_lengths=lengths.astype(np.int32),
                greedy_tokens=g_tok, greedy_logp=g_lp, greedy_logits=g_logits,
                sample_tokens=s_tok, sample_logp=s_lp,
                temperature=np.float32(TEMPERATURE))


def train_tokenizer(path: str, vocab_size: int = 320) -> None:
    """A tiny byte-level BPE (with <pad>, <s>, </s>, <unk>) and a chat-template config."""
    from tokenizers import (Tokenizer, decoders, models,  # pylint: disable=import-outside-toplevel
                            pre_tokenizers, trainers)

    corpus = TOKENIZER_TEXTS * 4 + [f"{a}+{b}={a + b} #### {a * b}" for a in range(40)
                                    for b in range(0, 40, 7)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                   "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "chat_template": CHAT_TEMPLATE, "model_max_length": 512}, f, indent=2)


def tokenizer_reference(path: str) -> dict:
    import transformers  # pylint: disable=import-outside-toplevel

    tok = transformers.AutoTokenizer.from_pretrained(path)
    return {
        "texts": TOKENIZER_TEXTS,
        "ids": [tok.encode(t, add_special_tokens=False) for t in TOKENIZER_TEXTS],
        "decoded": [tok.decode(tok.encode(t, add_special_tokens=False)) for t in TOKENIZER_TEXTS],
        "special": {"pad": tok.pad_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id,
                    "unk": tok.unk_token_id, "vocab_size": len(tok)},
        "messages": CHAT_MESSAGES,
        "chat": tok.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True),
    }


def make_all(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for family in FAMILIES:
        make_model(family, out)
    tok_dir = os.path.join(out, "tokenizer")
    train_tokenizer(tok_dir)
    with open(os.path.join(tok_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_reference(tok_dir), f, indent=1, ensure_ascii=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "data", "hf"))
    make_all(parser.parse_args().out)


if __name__ == "__main__":
    main()
