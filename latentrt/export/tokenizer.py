"""Export a diffusers pipeline's CLIP tokenizer into the ONNX model folder's `tokenizer/`.

The runtime reads `tokenizer.json` with the `tokenizers` library; optimum and diffusers (with
transformers 4.x, whose `CLIPTokenizer` is the slow pure-Python one) read `vocab.json`, `merges.txt`,
`tokenizer_config.json` and `special_tokens_map.json`. We write all five.

What transformers does here (5.x, checked with 5.24):
- `CLIPTokenizer` has a single backend, `tokenizers` (there is no slow Python CLIP tokenizer any more).
  Loading a folder with only `vocab.json` / `merges.txt` builds the BPE with CLIP's normalizer
  (NFC, collapse whitespace, lowercase), pre-tokenizer (CLIP's regex, then byte-level) and
  BOS/EOS post-processor in `CLIPTokenizer.__init__`: no slow->fast conversion is involved.
- `save_pretrained` writes only `tokenizer.json` and `tokenizer_config.json`; `vocab.json`,
  `merges.txt` and `special_tokens_map.json` are written here from the same backend tokenizer.
- The backend's truncation/padding state is serialized into `tokenizer.json` (the state left by the
  last call with `padding=`/`truncation=`), and transformers 5 re-enables it on load; we clear it.
- transformers 4.x (`CLIPTokenizerFast`) already wrote `tokenizer.json`; the same code handles it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def _load_fast_clip_tokenizer(src_tokenizer_dir: Path):  # -> transformers tokenizer with a backend_tokenizer
    import transformers

    # transformers 4.x: CLIPTokenizer is the slow one and CLIPTokenizerFast has the tokenizers backend;
    # transformers 5.x: CLIPTokenizer is tokenizers-backed (CLIPTokenizerFast is an alias of it).
    cls = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer
    try:
        tokenizer = cls.from_pretrained(str(src_tokenizer_dir))
    except Exception as exc:
        raise ValueError(
            f"cannot load the CLIP tokenizer in {src_tokenizer_dir} with transformers {transformers.__version__} "
            f"({type(exc).__name__}: {exc}); SRC must be a diffusers StableDiffusionPipeline folder whose "
            f"tokenizer/ holds vocab.json and merges.txt (or tokenizer.json)"
        ) from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(
            f"transformers {transformers.__version__} loaded {type(tokenizer).__name__} from {src_tokenizer_dir} "
            "without a `tokenizers` backend, so no tokenizer.json can be written; install transformers>=4.40 "
            "with the `tokenizers` library"
        )
    return tokenizer


def export_tokenizer(src_tokenizer_dir: Path, out_dir: Path) -> None:
    """Write `out_dir` with tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json.

    Args:
        src_tokenizer_dir: the diffusers folder's `tokenizer/` (vocab.json + merges.txt, or tokenizer.json).
        out_dir: the ONNX model folder's `tokenizer/` (created if needed).
    """
    src_tokenizer_dir = Path(src_tokenizer_dir)
    out_dir = Path(out_dir)
    if not src_tokenizer_dir.is_dir():
        raise FileNotFoundError(
            f"tokenizer folder {src_tokenizer_dir} does not exist; SRC must be a diffusers StableDiffusionPipeline "
            "folder with a tokenizer/ subfolder"
        )
    has_bpe_files = (src_tokenizer_dir / "vocab.json").is_file() and (src_tokenizer_dir / "merges.txt").is_file()
    if not has_bpe_files and not (src_tokenizer_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{src_tokenizer_dir} has neither vocab.json + merges.txt nor tokenizer.json; "
            "SRC must be a diffusers StableDiffusionPipeline folder with a CLIP tokenizer"
        )

    tokenizer = _load_fast_clip_tokenizer(src_tokenizer_dir)
    backend = tokenizer.backend_tokenizer
    # Save the tokenizer itself, not the state of its last call.
    backend.no_truncation()
    backend.no_padding()

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    if not (out_dir / "tokenizer.json").is_file():  # not written by every transformers version
        backend.save(str(out_dir / "tokenizer.json"))
    # vocab.json + merges.txt ("#version: 0.2" header, then one merge per line) for slow CLIP tokenizers,
    # from the same BPE model that tokenizer.json holds.
    backend.model.save(str(out_dir))
    special_tokens_map = {
        name: str(value) for name, value in tokenizer.special_tokens_map.items() if isinstance(value, str)
    }
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_tokens_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )

    missing = [name for name in TOKENIZER_FILES if not (out_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"tokenizer export to {out_dir} did not write {', '.join(missing)}")
    config = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    logger.info(
        "tokenizer: %s -> %s (vocab %d, model_max_length %s, pad %r)",
        src_tokenizer_dir,
        out_dir,
        backend.get_vocab_size(with_added_tokens=True),
        config.get("model_max_length"),
        tokenizer.pad_token,
    )
