"""Build CLIP's byte-level BPE `tokenizers.Tokenizer` from `vocab.json` + `merges.txt`.

Folders written by optimum (and the SD repositories themselves) carry only the slow tokenizer's
files. This is the same pipeline transformers' `CLIPTokenizer` (tokenizers backend) builds from
them: NFC + whitespace folding + lowercase, CLIP's split pattern, byte-level BPE with `</w>` word
ends, BOS/EOS around each prompt; the special tokens are added as special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build_clip_bpe(
    vocab_path: Path, merges_path: Path, specials: dict[str, str], normalized: dict[str, bool] | None = None
) -> Tokenizer:
    """`specials` maps bos_token/eos_token/unk_token/pad_token to their text; `normalized` says, per
    special token text, whether it also matches after normalization (lowercase)."""
    vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
    lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    bos, eos = specials["bos_token"], specials["eos_token"]
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="</w>",
            fuse_unk=False, unk_token=specials["unk_token"])
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    unique = list(dict.fromkeys(specials[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")))
    normalized = normalized or {}
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=normalized.get(t, False)) for t in unique])
    tokenizer.post_processor = processors.RobertaProcessing(
        (eos, tokenizer.token_to_id(eos)), (bos, tokenizer.token_to_id(bos)), trim_offsets=False, add_prefix_space=False
    )
    return tokenizer
