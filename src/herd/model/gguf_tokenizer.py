"""The tokenizer a GGUF file describes in its `tokenizer.*` metadata, rebuilt as a Hugging Face
fast tokenizer: `gpt2` byte-level BPE (vocabulary, merges, and the split rules of the
pre-tokenizer that `tokenizer.ggml.pre` names, as llama.cpp applies them) or `llama`
SentencePiece (pieces with scores, byte fallback), with BOS/EOS, special tokens and the chat
template. Built from the metadata alone: transformers' own GGUF conversion is the tests' reference."""

from pathlib import Path
from typing import Any

from herd.model.errors import ModelLoadError
from herd.model.gguf_file import read_metadata

# llama.cpp's token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# tokenizer.ggml.pre -> (regexes applied in turn, as llama.cpp's llama-vocab.cpp lists them;
# whether a word found whole in the vocabulary skips the merges: llama.cpp's ignore_merges)
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((_GPT2_SPLIT,), False),
    "gpt-2": ((_GPT2_SPLIT,), False),
    "gpt2": ((_GPT2_SPLIT,), False),
    "smollm": ((r"\p{N}", _GPT2_SPLIT), False),
    "starcoder": ((r"\p{N}", _GPT2_SPLIT), False),
    "refact": ((r"\p{N}", _GPT2_SPLIT), False),
    "llama3": ((_LLAMA3_SPLIT,), True),
    "llama-v3": ((_LLAMA3_SPLIT,), True),
    "llama-bpe": ((_LLAMA3_SPLIT,), True),
    "falcon3": ((_LLAMA3_SPLIT,), True),
    "dbrx": ((_LLAMA3_SPLIT,), False),
    "smaug-bpe": ((_LLAMA3_SPLIT,), False),
    "qwen2": ((_QWEN2_SPLIT,), False),
    "deepseek-r1-qwen": ((_QWEN2_SPLIT,), False),
}


def load_gguf_tokenizer(path: str | Path):
    """A `transformers.PreTrainedTokenizerFast` for the GGUF file at `path`."""
    from transformers import PreTrainedTokenizerFast

    meta = read_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] | None = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError(f"{Path(path).name} has no tokenizer.ggml.tokens (no tokenizer)")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if kind == "gpt2":
        tok, add_bos = _byte_level_bpe(meta, tokens, types), False
    elif kind == "llama":
        tok, add_bos = _sentencepiece(meta, tokens, types), True
    else:
        raise ModelLoadError(
            f"{Path(path).name}: GGUF tokenizer model {kind!r} is not supported ('gpt2', 'llama')"
        )
    _add_special_tokens(tok, tokens, types)
    names = _special_names(meta, tokens)
    _add_bos_eos(tok, meta, names, add_bos)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    fast.chat_template = meta.get("tokenizer.chat_template")
    return fast


def _byte_level_bpe(meta: dict, tokens: list[str], types: list[int]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ModelLoadError(
            f"GGUF pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})"
        )
    splits, ignore_merges = PRE_TOKENIZERS[pre]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    vocab = {
        # a normal token outside the byte alphabet is raw text: spell its bytes as GPT-2 does
        t if ty != NORMAL or set(t) <= alphabet else _byte_spelling(t): i
        for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
    }
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _byte_spelling(text: str) -> str:
    """GPT-2's printable spelling of the UTF-8 bytes of `text` (bytes_to_unicode)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    table = {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}
    return "".join(table[b] for b in text.encode())


def _sentencepiece(meta: dict, tokens: list[str], types: list[int]):
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {token: i for i, token in enumerate(tokens)}
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    tok = Tokenizer(
        models.BPE(
            vocab,
            _merges_by_score(tokens, scores, types),
            unk_token=tokens[unk] if unk is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    norm = [normalizers.Replace(" ", "\u2581")]
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:  # SentencePiece's dummy prefix: a space before the text, dropped when decoding
        norm.insert(0, normalizers.Prepend("\u2581"))
        steps.append(decoders.Strip(" ", 1, 0))
    tok.normalizer = normalizers.Sequence(norm)
    tok.decoder = decoders.Sequence(steps)
    return tok


def _merges_by_score(
    tokens: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """SentencePiece merges the adjacent pair whose union is the best-scored piece; as BPE
    ranks, that is every split of every normal piece into two pieces, best union first."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED)}
    ranked = []
    for token, i in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(tok, tokens: list[str], types: list[int]) -> None:
    """Control and unknown tokens match whole and are special (skipped when decoding);
    user-defined ones match whole but are text."""
    from tokenizers import AddedToken

    special = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty in (CONTROL, UNKNOWN)
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty == USER_DEFINED
    ]
    tok.add_special_tokens(special)
    tok.add_tokens(user)


def _special_names(meta: dict, tokens: list[str]) -> dict[str, Any]:
    names = {}
    for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= token_id < len(tokens):
            names[f"{name}_token"] = tokens[token_id]
    return names


def _add_bos_eos(tok, meta: dict, names: dict, add_bos_default: bool) -> None:
    """encode() adds BOS / EOS as the file's add_bos_token / add_eos_token say (llama.cpp adds
    BOS to a SentencePiece vocabulary that does not say)."""
    from tokenizers import processors

    add_bos = meta.get("tokenizer.ggml.add_bos_token", add_bos_default) and "bos_token" in names
    add_eos = meta.get("tokenizer.ggml.add_eos_token", False) and "eos_token" in names
    if not (add_bos or add_eos):
        return
    bos, eos = names.get("bos_token"), names.get("eos_token")
    single = " ".join([*([bos] if add_bos else []), "$A", *([eos] if add_eos else [])])
    pair = single + " " + single.replace("$A", "$B")
    used = {t for t in (bos if add_bos else None, eos if add_eos else None) if t}
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t in used]
    )
