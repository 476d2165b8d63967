"""CLIP tokenization for the runtime, through the `tokenizers` library only (no transformers).

The ONNX model folder's `tokenizer/` holds a `tokenizer.json` (the `tokenizers` serialization of the
byte-level BPE with CLIP's normalizer, pre-tokenizer and BOS/EOS post-processor) beside the
`tokenizer_config.json` / `special_tokens_map.json` that transformers writes. `ClipTokenizer.encode`
returns exactly what diffusers feeds the text encoder:

    CLIPTokenizer(prompts, padding="max_length", max_length=model_max_length, truncation=True).input_ids

It gets there the way transformers' tokenizers backend does (`set_truncation_and_padding`): the
backend tokenizer with truncation to `max_length` (longest first, so BOS + the first max_length - 2
tokens + EOS) and padding to a fixed `max_length` with the folder's pad token (`<|endoftext|>` in SD 1.x
folders, `!` in SD 2.x ones). A prompt that does not fit is cut and a warning names the part that was
cut, like diffusers does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

from latentrt.runtime.clip_bpe import build_clip_bpe

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

DEFAULT_MAX_LENGTH = 77  # CLIP's context length; used when the folder does not say
DEFAULT_PAD_TOKEN = "<|endoftext|>"  # transformers' CLIPTokenizer default pad token
# transformers writes model_max_length = int(1e30) ("no limit") when none was set: treat as unset.
_UNSET_MAX_LENGTH_ABOVE = 1_000_000

_REEXPORT_HINT = "re-export the model with `latentrt export SRC OUT` (it writes tokenizer/tokenizer.json)"


def _token_content(value: Any) -> str | None:
    """A special token as written by transformers: a string, or an AddedToken dict with `content`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; fix or delete the file, or {_REEXPORT_HINT}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}; {_REEXPORT_HINT}")
    return data


class ClipTokenizer:
    """CLIP prompt -> fixed-length token ids, equal to transformers' `CLIPTokenizer` on the same folder.

    Attributes:
        max_length: length of every row that `encode` returns (77 for CLIP).
        pad_token_id: id used to fill rows after EOS.
        pad_token: the pad token's text.
        truncation_side / padding_side: "right" (CLIP's) unless the folder's config says otherwise.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        pad_token: str = DEFAULT_PAD_TOKEN,
        truncation_side: str = "right",
        padding_side: str = "right",
    ) -> None:
        for name, side in (("truncation_side", truncation_side), ("padding_side", padding_side)):
            if side not in ("right", "left"):
                raise ValueError(f"{name} must be 'right' or 'left', got {side!r}")
        n_special = tokenizer.num_special_tokens_to_add(False)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= n_special:
            raise ValueError(
                f"max_length must be an int above the {n_special} special tokens added per prompt, got {max_length!r}"
            )
        pad_token_id = tokenizer.token_to_id(pad_token)
        if pad_token_id is None:
            raise ValueError(
                f"pad token {pad_token!r} is not in the tokenizer's vocabulary; set `pad_token` in "
                f"{TOKENIZER_CONFIG_FILE} to a token of the vocabulary, or {_REEXPORT_HINT}"
            )
        self.max_length: int = max_length
        self.pad_token: str = pad_token
        self.pad_token_id: int = int(pad_token_id)
        self.truncation_side: str = truncation_side
        self.padding_side: str = padding_side
        self._tokenizer = tokenizer
        # The settings transformers applies for padding="max_length", truncation=True (this replaces any
        # truncation/padding state that was saved inside tokenizer.json).
        tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first", direction=truncation_side)
        tokenizer.enable_padding(
            direction=padding_side, pad_id=self.pad_token_id, pad_type_id=0, pad_token=pad_token, length=max_length
        )

    @classmethod
    def from_folder(cls, folder: Path | str, max_length: int | None = None) -> ClipTokenizer:
        """Load a tokenizer folder (`<model>/tokenizer/`) written by `latentrt export`, optimum or transformers.

        Reads `tokenizer.json` (required) and, when present, `tokenizer_config.json` and
        `special_tokens_map.json` for `model_max_length` (default 77) and the pad token (default
        `<|endoftext|>`), with transformers' precedence: `special_tokens_map.json` overrides the config's
        special tokens unless the config carries `added_tokens_decoder`.

        Args:
            folder: the tokenizer folder.
            max_length: overrides the folder's `model_max_length` (e.g. the text encoder's
                `max_position_embeddings`).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist; {_REEXPORT_HINT}")
        config: dict[str, Any] = {}
        if (folder / TOKENIZER_CONFIG_FILE).is_file():
            config = _read_json(folder / TOKENIZER_CONFIG_FILE)
        special: dict[str, Any] = {}
        if "added_tokens_decoder" not in config and (folder / SPECIAL_TOKENS_MAP_FILE).is_file():
            special = _read_json(folder / SPECIAL_TOKENS_MAP_FILE)

        def token(key: str, default: str) -> str:
            return _token_content(special.get(key)) or _token_content(config.get(key)) or default

        tokenizer_path = folder / TOKENIZER_FILE
        if tokenizer_path.is_file():
            try:
                tokenizer = Tokenizer.from_file(str(tokenizer_path))
            except Exception as exc:  # tokenizers raises a bare Exception for malformed files
                raise ValueError(f"cannot load {tokenizer_path}: {exc}; {_REEXPORT_HINT}") from exc
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            # optimum's folders (and the SD repositories) carry only the slow tokenizer's files
            keys = (("bos_token", "<|startoftext|>"), ("eos_token", DEFAULT_PAD_TOKEN),
                    ("unk_token", DEFAULT_PAD_TOKEN), ("pad_token", DEFAULT_PAD_TOKEN))
            specials = {k: token(k, d) for k, d in keys}
            # transformers matches a special token case-insensitively only when every entry naming it
            # is an AddedToken dict with "normalized": true (a plain string counts as not normalized)
            normalized = {
                text: all(isinstance(v, dict) and v.get("normalized", False)
                          for v in (special.get(k, config.get(k)) for k, _ in keys) if _token_content(v) == text)
                for text in specials.values()
            }
            try:
                tokenizer = build_clip_bpe(folder / "vocab.json", folder / "merges.txt", specials, normalized)
            except Exception as exc:
                raise ValueError(f"cannot build the CLIP tokenizer from {folder}/vocab.json and merges.txt: {exc}; {_REEXPORT_HINT}") from exc
        else:
            present = sorted(p.name for p in folder.iterdir())
            raise FileNotFoundError(
                f"{tokenizer_path} is missing (and there is no vocab.json + merges.txt to build it from); "
                f"{_REEXPORT_HINT}. Files found: {', '.join(present) or 'none'}"
            )

        pad_token = token("pad_token", "") or None
        if max_length is None:
            folder_max = config.get("model_max_length")
            if isinstance(folder_max, (int, float)) and not isinstance(folder_max, bool) and 0 < folder_max:
                if folder_max <= _UNSET_MAX_LENGTH_ABOVE:
                    max_length = int(folder_max)
            if max_length is None:
                logger.debug("%s sets no usable model_max_length; using %d", folder, DEFAULT_MAX_LENGTH)
                max_length = DEFAULT_MAX_LENGTH
        return cls(
            tokenizer,
            max_length=max_length,
            pad_token=pad_token or DEFAULT_PAD_TOKEN,
            truncation_side=config.get("truncation_side", "right"),
            padding_side=config.get("padding_side", "right"),
        )

    def encode(self, prompts: list[str]) -> NDArray[np.int64]:
        """Token ids, one row per prompt: BOS, tokens, EOS, then pad ids up to `max_length`.

        A prompt longer than `max_length - 2` tokens keeps its first tokens and a warning names the text
        that was cut, in the prompt's own characters from the first token dropped (a character whose
        bytes were split between kept and dropped tokens shows in full).
        """
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of str, got {prompts!r:.80}")
        if not prompts:
            return np.zeros((0, self.max_length), dtype=np.int64)
        encodings = self._tokenizer.encode_batch(list(prompts), add_special_tokens=True)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)  # (B, max_length)
        for prompt, encoding in zip(prompts, encodings):
            if encoding.overflowing:
                self._warn_truncated(prompt, encoding)
        return ids

    def __call__(self, prompts: list[str]) -> NDArray[np.int64]:
        return self.encode(prompts)

    def _warn_truncated(self, prompt: str, encoding: Any) -> None:
        def content_offsets(enc: Any) -> list[tuple[int, int]]:
            return [off for off, special in zip(enc.offsets, enc.special_tokens_mask) if not special]

        if self.truncation_side == "right":
            # The first overflowing piece continues right after the kept tokens (stride 0).
            dropped = content_offsets(encoding.overflowing[0])
            cut = prompt[dropped[0][0] :] if dropped else ""
        else:
            kept = content_offsets(encoding)
            cut = prompt[: kept[0][0]] if kept else prompt
        logger.warning(
            "The following part of your input was truncated because CLIP can only handle sequences up to "
            "%d tokens: %r",
            self.max_length,
            cut.strip(),
        )
