"""A CLIP BPE tokenizer with a small vocabulary of its own, for the shapes captions.

CLIP's format: ``vocab.json`` (token -> id) and ``merges.txt`` (BPE merges, by rank), words carry the
end-of-word suffix ``</w>``, and ``<|startoftext|>`` / ``<|endoftext|>`` frame every prompt. We learn
the merges with textbook BPE on the caption words (each word once, ties broken alphabetically) until
every word is one token; by construction BPE encoding reproduces each training word as one token.
The base alphabet is a-z and a few punctuation marks, so other words still tokenize (as letters).
"""

from __future__ import annotations

import json
import os
from collections import Counter

from .dataset import BACKGROUNDS, COLORS, HORIZONTALS, SHAPES, VERTICALS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
EOW = "</w>"
MODEL_MAX_LENGTH = 16  # BOS + 11 caption words + EOS fits, with room for a short paraphrase

EXTRA_WORDS = ("an", "grey", "centre", "shape", "image", "of", "in")
ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz") + tuple(",.!'-")


def caption_words() -> list[str]:
    words = ["a", "at", "the", "on", "background", *COLORS, *SHAPES, *VERTICALS, *HORIZONTALS, *BACKGROUNDS, *EXTRA_WORDS]
    return sorted(set(words))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    segs = {w: [*w[:-1], w[-1] + EOW] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for s in segs.values():
            for p in zip(s, s[1:]):
                pairs[p] += 1
        if not pairs:
            return merges
        best = max(pairs.items(), key=lambda kv: (kv[1], [-ord(c) for c in kv[0][0] + " " + kv[0][1]]))[0]
        best = min((p for p, c in pairs.items() if c == pairs[best]))  # alphabetical among the most frequent
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = learn_merges(caption_words())
    tokens = list(ALPHABET) + [c + EOW for c in ALPHABET]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: str) -> None:
    """Write vocab.json and merges.txt (CLIP format) into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    vocab, merges = build_vocab()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=1)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


TOKENIZER_CONFIG = {
    "tokenizer_class": "CLIPTokenizer",
    "model_max_length": MODEL_MAX_LENGTH,
    "bos_token": BOS,
    "eos_token": EOS,
    "unk_token": EOS,
    "pad_token": EOS,
}


def write_tokenizer_folder(folder: str) -> None:
    """vocab.json, merges.txt and tokenizer_config.json: what ``CLIPTokenizer.from_pretrained`` reads."""
    write_tokenizer_files(folder)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2)


def make_clip_tokenizer(folder: str):
    """Write the tokenizer folder and load it with ``transformers.CLIPTokenizer.from_pretrained``.

    After ``tokenizer.save_pretrained(dest)`` (which writes tokenizer.json for the ``tokenizers``
    library), call ``write_tokenizer_files(dest)`` so the folder keeps vocab.json and merges.txt too.
    """
    from transformers import CLIPTokenizer

    write_tokenizer_folder(folder)
    tok = CLIPTokenizer.from_pretrained(folder)
    for w in caption_words():
        ids = tok(w).input_ids
        if len(ids) != 3:
            raise RuntimeError(f"word {w!r} is not one token: {ids}")
    return tok
