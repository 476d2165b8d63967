"""The runtime's CLIP tokenizer equals transformers' CLIPTokenizer on the real CLIP vocabulary.

The vocabulary is OpenAI CLIP's BPE merge list (tests/assets/clip/bpe_simple_vocab_16e6.txt.gz, from the
open_clip_torch wheel); vocab.json and merges.txt are built from it here exactly as CLIP's SimpleTokenizer
builds its encoder, into folders shaped like a diffusers pipeline's `tokenizer/` (SD 1.x pads with
`<|endoftext|>`, SD 2.x with `!`). Each folder goes through `export_tokenizer`, the runtime loads the result
with `ClipTokenizer.from_folder`, and the ids must equal

    CLIPTokenizer.from_pretrained(src)(prompts, padding="max_length", max_length=77, truncation=True).input_ids

transformers 5 has only the `tokenizers`-backed CLIPTokenizer (no pure-Python one), so the same strings are
also compared with a re-implementation of OpenAI CLIP's pure-Python SimpleTokenizer.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import subprocess
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from latentrt.export.tokenizer import export_tokenizer
from latentrt.runtime.tokenizer import ClipTokenizer

regex = pytest.importorskip("regex")  # a transformers dependency; CLIP's pre-tokenizer needs \p{L}
transformers = pytest.importorskip("transformers")

BPE_GZ = Path(__file__).parent / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
LOGGER_NAME = "latentrt.runtime.tokenizer"

# ---------------------------------------------------------------------------------------------------
# Strings compared. Long ones (past 77 tokens) are in LONG_PROMPTS below and are compared too.

PROMPTS: list[str] = [
    # plain prompts
    "a photo of a cat",
    "A watercolor painting of a fox in the snow",
    "an astronaut riding a horse on mars, highly detailed, 8k",
    "portrait of an old man, oil on canvas, rembrandt lighting",
    "cyberpunk city at night with neon lights and rain",
    "a bowl of ramen, studio ghibli style",
    "masterpiece, best quality, ultra-detailed, sharp focus",
    "",
    # capitals
    "A PHOTO OF A CAT",
    "MiXeD CaSe WoRdS",
    "NASA's Apollo LANDING",
    # contractions and apostrophes
    "it's the dog's bone, isn't it? they're here, we've won, I'm sure, you'll see, he'd go",
    "IT'S LOUD AND WE'LL KNOW",
    "rock 'n' roll",
    "''quoted'' and 's alone",
    # numbers
    "1girl, 2boys, 3 cats",
    "1234567890",
    "3.14159 and 2,718",
    "the year 2024",
    "0.5x zoom at f/1.8, 50mm lens",
    "(masterpiece:1.2), [blurry:0.8], {detailed}",
    "²³ superscripts and ½ fractions and Ⅻ roman",
    # punctuation
    "hello, world!",
    "wow!!!",
    "what?!",
    "a...b",
    "((((best quality))))",
    "#hashtag @mention $100 50% a&b",
    "emoticons :) :-( ;)",
    "path/to/file.png",
    "C++ and C#",
    "x = y + z * 2 - 1 / 3",
    "~tilde~ `backtick` ^caret^ |pipe| \\backslash\\",
    "under_score and hyphen-ated and en–dash and em—dash",
    "«guillemets» and „low quotes“",
    "“curly quotes” and ‘single’",
    "a, b; c: d",
    # whitespace
    "  leading spaces",
    "trailing spaces   ",
    "extra    spaces   between   words",
    "\ttabs\tand\nnewlines\r\nmixed \t \n ",
    " ",
    "\u00a0non-breaking\u00a0space",
    "\u3000ideographic space\u3000",
    "zero\u200bwidth space",
    # accents and other scripts
    "café crème brûlée",
    "naïve résumé à la façon",
    "Ünïcödé ÜBER straße",
    "e\u0301 combining acute, a\u0308 combining diaeresis",
    "İstanbul DİYARBAKIR",
    "ΣΊΣΥΦΟΣ and Ω",
    "Привет мир, кошка",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "ภาษาไทย",
    # CJK
    "東京タワーの夜景",
    "一只猫在月光下",
    "한국어 프롬프트",
    "日本語とEnglishの混合",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    # emoji
    "a fox 🦊 in the snow ❄️",
    "🔥🔥🔥",
    "👩‍🚀 astronaut with a ZWJ sequence",
    "flags 🇯🇵🇫🇷",
    # html entity and special-token text
    "Tom &amp; Jerry",
    "<|startoftext|>a cat<|endoftext|>",
    "<|ENDOFTEXT|> shouting",
]

# Past 77 tokens, each with the text that the warning must name as cut (checked against transformers too).
LONG_PROMPTS: list[tuple[str, str]] = [
    ("photo " * 75 + "beyond the limit", "beyond the limit"),
    ("cat " * 76, "cat"),
    ("fox " * 74 + "東京 tower at night", "京 tower at night"),  # 東 = 1 token; 京 = 2 (bytes split)
    (
        "a highly detailed matte painting of a vast alien landscape with towering crystal spires, "
        "bioluminescent plants, two moons in a purple sky, volumetric fog, god rays, by greg rutkowski "
        "and thomas kinkade, trending on artstation, octane render, unreal engine 5, 8k uhd, hdr, "
        "intricate details, cinematic composition, award winning photograph, sharp focus, dramatic "
        "lighting, rule of thirds, ultra wide angle lens, masterpiece",
        None,  # computed from transformers' own ids below
    ),
    ("🦊" * 60, None),
    ("a" * 600, None),
    ("Ünïcödé " * 40, None),
]
EXACT_FIT = "cat " * 75  # 75 tokens + BOS + EOS = 77: no truncation, no warning

ALL_STRINGS = PROMPTS + [p for p, _ in LONG_PROMPTS] + [EXACT_FIT]

# Strings on which OpenAI's SimpleTokenizer differs from transformers' CLIPTokenizer by design (checked to
# differ below). With ftfy (not re-implemented: it is no dependency here), SimpleTokenizer would also differ on
# the strings with curly quotes (ftfy uncurls them) and on "ｆｕｌｌｗｉｄｔｈ ＡＢＣ" (ftfy folds full width).
# (transformers 4.x's slow CLIPTokenizer with ftfy installed differs on exactly these; without ftfy it falls
# back to BERT's BasicTokenizer and also differs on CJK, zero-width characters and emoji ZWJ sequences.)
SIMPLE_TOKENIZER_DIFFERS = {
    "Tom &amp; Jerry": "SimpleTokenizer unescapes HTML entities",
    "<|ENDOFTEXT|> shouting": "SimpleTokenizer matches special tokens case-insensitively",
    "ΣΊΣΥΦΟΣ and Ω": "str.lower() gives a final sigma; tokenizers' Lowercase maps char by char",
}


# ---------------------------------------------------------------------------------------------------
# CLIP's BPE, built from the vendored merge list the way OpenAI CLIP / open_clip's SimpleTokenizer does.


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache
def clip_merges() -> tuple[str, ...]:
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    return tuple(lines[1 : 49152 - 256 - 2 + 1])


@lru_cache
def clip_vocab() -> tuple[str, ...]:
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(merge.split()) for merge in clip_merges()]
    vocab += [BOS, EOS]
    return tuple(vocab)


class SimpleTokenizer:
    """OpenAI CLIP's pure-Python tokenizer (clip/simple_tokenizer.py); ftfy.fix_text reduced to its NFC step."""

    def __init__(self) -> None:
        self.byte_encoder = bytes_to_unicode()
        merges = [tuple(m.split()) for m in clip_merges()]
        self.encoder = {token: i for i, token in enumerate(clip_vocab())}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {BOS: BOS, EOS: EOS}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFC", text)  # basic_clean: ftfy.fix_text (its NFC step), then
        text = html.unescape(html.unescape(text)).strip()  # HTML entities
        text = " ".join(text.split()).strip().lower()  # whitespace_clean, then lower
        ids: list[int] = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids


# ---------------------------------------------------------------------------------------------------
# Folders


def _added_token(content: str) -> dict:
    flags = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", "content": content, **flags}


def write_diffusers_tokenizer_folder(folder: Path, pad_token: str) -> Path:
    """A `tokenizer/` as in the SD 1.5 / SD 2.1 diffusers repositories (slow-tokenizer files only)."""
    folder.mkdir(parents=True)
    vocab = clip_vocab()
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    (folder / "vocab.json").write_text(vocab_json, encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(clip_merges()) + "\n", encoding="utf-8")
    config = {
        "add_prefix_space": False,
        "bos_token": _added_token(BOS),
        "do_lower_case": True,
        "eos_token": _added_token(EOS),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": pad_token,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token(EOS),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {
        key: {k: v for k, v in _added_token(token).items() if k != "__type"}
        for key, token in (("bos_token", BOS), ("eos_token", EOS), ("unk_token", EOS))
    }
    special["pad_token"] = pad_token
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder


STYLES = {"sd1": EOS, "sd2": "!"}


@pytest.fixture(scope="module", params=sorted(STYLES))
def folders(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(style, diffusers tokenizer folder, exported folder)."""
    root = tmp_path_factory.mktemp(f"tok_{request.param}")
    src = write_diffusers_tokenizer_folder(root / "src" / "tokenizer", STYLES[request.param])
    out = root / "onnx" / "tokenizer"
    export_tokenizer(src, out)
    return request.param, src, out


@lru_cache
def reference_tokenizer(folder: Path):
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def reference_ids(folder: Path, prompts: list[str], max_length: int | None = None) -> np.ndarray:
    tok = reference_tokenizer(folder)
    max_length = max_length or tok.model_max_length
    return np.array(tok(prompts, padding="max_length", max_length=max_length, truncation=True).input_ids)


# ---------------------------------------------------------------------------------------------------
# Tests


def test_vocabulary_is_clips() -> None:
    vocab = clip_vocab()
    assert len(clip_merges()) == 48894
    assert len(vocab) == len(set(vocab)) == 49408
    assert vocab.index(BOS) == 49406 and vocab.index(EOS) == 49407


def test_string_set_is_large_enough() -> None:
    assert len(set(ALL_STRINGS)) >= 60
    assert len(LONG_PROMPTS) >= 5 and "" in ALL_STRINGS


def test_export_writes_loadable_folder(folders) -> None:
    style, src, out = folders
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).is_file(), name
    # Same BPE as the source files, so slow (transformers 4.x) loaders see the same vocabulary.
    assert json.loads((out / "vocab.json").read_text("utf-8")) == json.loads((src / "vocab.json").read_text("utf-8"))
    assert (out / "merges.txt").read_text("utf-8").split() == (src / "merges.txt").read_text("utf-8").split()
    saved = json.loads((out / "tokenizer.json").read_text("utf-8"))
    assert saved["truncation"] is None and saved["padding"] is None
    config = json.loads((out / "tokenizer_config.json").read_text("utf-8"))
    assert config["model_max_length"] == 77 and config["pad_token"] == STYLES[style]
    assert json.loads((out / "special_tokens_map.json").read_text("utf-8"))["pad_token"] == STYLES[style]


def test_ids_equal_transformers(folders) -> None:
    style, src, out = folders
    tok = ClipTokenizer.from_folder(out)
    ref_tok = reference_tokenizer(src)
    assert tok.max_length == 77
    assert tok.pad_token_id == ref_tok.pad_token_id == (49407 if style == "sd1" else 0)

    ids = tok.encode(ALL_STRINGS)
    assert ids.dtype == np.int64 and ids.shape == (len(ALL_STRINGS), 77)
    expected = reference_ids(src, ALL_STRINGS)
    mismatched = [s for s, a, b in zip(ALL_STRINGS, ids, expected) if not np.array_equal(a, b)]
    assert not mismatched, f"{len(mismatched)} strings differ from transformers: {mismatched[:5]!r}"
    # transformers on the exported folder (what diffusers / optimum load) agrees as well.
    np.testing.assert_array_equal(reference_ids(out, ALL_STRINGS), expected)
    # one at a time gives the same rows as the batch
    for i in (0, 7, len(PROMPTS)):
        np.testing.assert_array_equal(tok.encode([ALL_STRINGS[i]])[0], ids[i])


def test_ids_equal_clip_simple_tokenizer(folders) -> None:
    """An independent, pure-Python reference: OpenAI CLIP's SimpleTokenizer."""
    style, _, out = folders
    tok = ClipTokenizer.from_folder(out)
    simple = SimpleTokenizer()
    strings = [s for s in ALL_STRINGS if s not in SIMPLE_TOKENIZER_DIFFERS]
    if style == "sd2":  # transformers makes the pad token "!" special there (see test_sd2_exclamation_mark)
        strings = [s for s in strings if "!" not in s]
    assert len(strings) >= 60
    ids = tok.encode(strings)
    for s, row in zip(strings, ids):
        content = simple.encode(s)[: tok.max_length - 2]
        expected = [49406, *content, 49407] + [tok.pad_token_id] * (tok.max_length - 2 - len(content))
        assert row.tolist() == expected, s
    # The known differences really are differences (so the exclusion list stays honest).
    for s in SIMPLE_TOKENIZER_DIFFERS:
        if style == "sd2" and s.startswith("<|ENDOFTEXT|>"):
            continue  # transformers marks <|endoftext|> `normalized` in SD 2.x folders: it matches after lowercasing
        content = simple.encode(s)
        assert tok.encode([s])[0, 1 : 1 + len(content) + 1].tolist() != [*content, 49407], s


def test_sd2_exclamation_mark(folders) -> None:
    """transformers makes the pad token special: with SD 2.x's pad "!", every "!" is id 0, never BPE-merged."""
    style, src, out = folders
    ids = ClipTokenizer.from_folder(out).encode(["wow!!"])[0]
    np.testing.assert_array_equal(ids, reference_ids(src, ["wow!!"])[0])
    if style == "sd1":
        assert ids[:4].tolist() == [49406, 2781, 748, 49407]  # "wow</w>", "!!</w>"
    else:
        assert ids[:5].tolist() == [49406, 2781, 0, 0, 49407]


def test_truncation_warns_with_cut_text(folders, caplog) -> None:
    _, src, out = folders
    tok = ClipTokenizer.from_folder(out)
    prompts = [p for p, _ in LONG_PROMPTS]
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        ids = tok.encode(prompts)
    np.testing.assert_array_equal(ids, reference_ids(src, prompts))
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME and r.levelno == logging.WARNING]
    assert len(messages) == len(prompts), messages
    ref_tok = reference_tokenizer(src)
    for (prompt, cut), row, message in zip(LONG_PROMPTS, ids, messages):
        assert row[0] == 49406 and row[-1] == 49407 and tok.pad_token_id not in row[1:-1].tolist()
        assert "truncated because CLIP can only handle sequences up to 77 tokens" in message
        if cut is None:
            # What transformers dropped, decoded as diffusers does, must be what the warning names, modulo
            # spaces and case; a character whose bytes were split shows in full here, as U+FFFD there.
            full = ref_tok(prompt, verbose=False).input_ids
            decoded = ref_tok.decode(full[76:-1]).replace(" ", "")
            named = message.split("tokens: ", 1)[1].strip("'\"").replace(" ", "").lower()
            if decoded.startswith("\ufffd"):
                decoded, named = decoded.lstrip("\ufffd"), named[1:]
            assert named == decoded, (named, decoded)
        else:
            assert message.endswith(repr(cut)), message


def test_exact_fit_does_not_warn(folders, caplog) -> None:
    _, _, out = folders
    tok = ClipTokenizer.from_folder(out)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        ids = tok.encode([EXACT_FIT, "a photo of a cat"])
    assert ids[0, -1] == 49407 and 49407 not in ids[0, 1:-1].tolist()
    assert not [r for r in caplog.records if r.name == LOGGER_NAME]


def test_max_length_override(folders) -> None:
    _, src, out = folders
    tok = ClipTokenizer.from_folder(out, max_length=16)
    assert tok.max_length == 16
    np.testing.assert_array_equal(tok.encode(ALL_STRINGS), reference_ids(src, ALL_STRINGS, max_length=16))


def test_empty_batch_and_bad_input(folders) -> None:
    _, _, out = folders
    tok = ClipTokenizer.from_folder(out)
    assert tok.encode([]).shape == (0, 77)
    with pytest.raises(TypeError, match="list of str"):
        tok.encode("a bare string")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        ClipTokenizer.from_folder(out, max_length=2)


def test_folder_with_only_vocab_and_merges(folders, tmp_path) -> None:
    """optimum's folders carry no tokenizer.json: the runtime builds CLIP's BPE from vocab.json + merges.txt."""
    style, src, _ = folders
    tok = ClipTokenizer.from_folder(src)
    assert tok.pad_token_id == (49407 if style == "sd1" else 0)
    ids = tok.encode(ALL_STRINGS)
    expected = reference_ids(src, ALL_STRINGS)
    mismatched = [s for s, a, b in zip(ALL_STRINGS, ids, expected) if not np.array_equal(a, b)]
    assert not mismatched, f"{len(mismatched)} strings differ from transformers: {mismatched[:5]!r}"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json is missing.*vocab\.json \+ merges\.txt.*latentrt export"):
        ClipTokenizer.from_folder(empty)


def test_bad_folders(tmp_path: Path, folders) -> None:
    _, _, out = folders
    with pytest.raises(FileNotFoundError, match="does not exist.*latentrt export"):
        ClipTokenizer.from_folder(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(ValueError, match=r"cannot load .*tokenizer\.json.*latentrt export"):
        ClipTokenizer.from_folder(broken)
    bad_pad = tmp_path / "bad_pad"
    bad_pad.mkdir()
    (bad_pad / "tokenizer.json").write_bytes((out / "tokenizer.json").read_bytes())
    (bad_pad / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"pad token '<pad>' is not in the tokenizer's vocabulary"):
        ClipTokenizer.from_folder(bad_pad)
    (bad_pad / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"cannot read .*tokenizer_config\.json"):
        ClipTokenizer.from_folder(bad_pad)


def test_export_refuses_non_tokenizer_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither vocab.json"):
        export_tokenizer(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_tokenizer(tmp_path / "nowhere", tmp_path / "out")


def test_runtime_tokenizer_imports_no_transformers() -> None:
    code = (
        "import sys, latentrt.runtime.tokenizer\n"
        "bad = sorted({'torch', 'transformers', 'diffusers'} & set(sys.modules))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
