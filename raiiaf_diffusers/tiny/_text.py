"""Tokenizers and text encoders for the tiny pipelines, built locally (no Hub download).

Tokenizers are loaded from vocabulary files written to a temporary folder (CLIP) or from an in-memory
vocabulary (T5); the text encoders are the real transformers classes with tiny configs. Their weights
are random: the callers seed each construction (see ``_common.seeded``).
"""

from __future__ import annotations

import json
import os
import tempfile


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level BPE alphabet: every byte maps to a printable unicode character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# A few merges of common English letter pairs, so prompts tokenize into more than single letters.
_MERGES = ["t h", "th e</w>", "a n", "i n", "e r", "o n", "r e", "a t", "e n", "o r", "s t", "a r", "c a", "ca t</w>"]


def _clip_vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    for ch in _bytes_to_unicode().values():
        vocab[ch + "</w>"] = len(vocab)
    for merge in _MERGES:
        merged = merge.replace(" ", "")
        if merged not in vocab:
            vocab[merged] = len(vocab)
    return vocab  # 530 entries: fits the 1000-token text encoders below


def clip_tokenizer(model_max_length: int = 77):
    """A CLIP byte-level BPE tokenizer loaded from vocab.json / merges.txt written to a temporary folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="raiiaf-tiny-clip-") as folder:
        vocab_file = os.path.join(folder, "vocab.json")
        merges_file = os.path.join(folder, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(_clip_vocab(), f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
        return CLIPTokenizer(vocab=vocab_file, merges=merges_file, model_max_length=model_max_length)


def t5_tokenizer(model_max_length: int = 512):
    """A T5 (Unigram) tokenizer over lowercase letters, digits and a few word pieces; ids stay below 100."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for word in ("the", "a", "of", "cat", "dog", "painting", "photo"):
        pieces.append(("▁" + word, -3.0))
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-":
        pieces.append(("▁" + ch, -6.0))
        pieces.append((ch, -5.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def clip_text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
        **extra,
    )


# The tiny T5 dimensions, shared by the T5 and UMT5 encoders; ids agree with ``t5_tokenizer``.
_T5_SETTINGS = dict(
    vocab_size=1000,
    d_model=32,
    d_kv=8,
    d_ff=37,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    dropout_rate=0.1,  # as in real T5: eval() must switch it off
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**_T5_SETTINGS))


# Qwen2 / Qwen2.5-VL / Qwen3 control tokens the diffusers prompt templates and chat templates use.
_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>", "<think>", "</think>"]
_QWEN_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "e r", "o n", "a t", "Ġ a", "Ġ c", "Ġc at", "Ġ p", "i t", "Ġp a"]

# Qwen3's chat template reduced to what the pipelines ask of it: role blocks, the assistant prompt, and
# the empty thinking block that ``enable_thinking=False`` inserts.
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

QWEN_VOCAB_SIZE = 320  # byte alphabet + merges + control tokens, rounded up; the text encoders' vocab_size


def qwen_tokenizer():
    """A Qwen2 byte-level BPE tokenizer (bytes, a few merges, the control tokens) with a chat template."""
    from transformers import AddedToken, Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(_bytes_to_unicode().values())}
    for merge in _QWEN_MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    for token in _QWEN_SPECIAL:
        vocab[token] = len(vocab)
    assert len(vocab) <= QWEN_VOCAB_SIZE
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m.split()) for m in _QWEN_MERGES])
    # Registered as special so that they are matched whole, never split into bytes.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in _QWEN_SPECIAL], special_tokens=True)
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    return tokenizer


def qwen_token_ids(tokenizer) -> dict:
    """The control-token ids a Qwen text encoder's config must agree with."""
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>"), ("pad_token_id", "<|endoftext|>"))}


def qwen3_config(tokenizer, num_hidden_layers: int = 2):
    """A 16-wide Qwen3 language-model config whose vocabulary and control ids agree with ``tokenizer``."""
    from transformers import Qwen3Config

    return Qwen3Config(
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=QWEN_VOCAB_SIZE,
        max_position_embeddings=512,
        **qwen_token_ids(tokenizer),
    )


def umt5_encoder():
    """UMT5 (Wan's text encoder) with the tiny T5 dimensions; reads ``t5_tokenizer`` ids."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**_T5_SETTINGS))


_GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
_GEMMA_MERGES = [("▁", "a"), ("▁", "c"), ("a", "t"), ("▁c", "at"), ("t", "h"), ("th", "e"), ("▁", "the")]


def gemma_tokenizer():
    """A Gemma BPE tokenizer: control tokens, the 256 byte-fallback pieces, letters, digits, a few merges."""
    from transformers import GemmaTokenizer

    vocab = {token: i for i, token in enumerate(_GEMMA_SPECIAL)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:\n":
        vocab.setdefault(ch, len(vocab))
    for left, right in _GEMMA_MERGES:
        vocab.setdefault(left + right, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=list(_GEMMA_MERGES))


def gemma2_config(tokenizer, **dims):
    """A Gemma2 config of the given tiny ``dims`` whose vocabulary and control ids agree with ``tokenizer``."""
    from transformers import Gemma2Config

    return Gemma2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **dims)
