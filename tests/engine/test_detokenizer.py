"""Incremental detokenization never splits a multi-byte character and adds up to decode()."""

from herd.engine.tokenizer import IncrementalDetokenizer, Tokenizer


def test_deltas_add_up_and_never_hold_partial_characters(tiny_model_dir):
    tok = Tokenizer(tiny_model_dir)
    text = "naïve café 東京 😀 Ωmega ünïcödé ✓"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add([t]) for t in ids]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_special_tokens_are_skipped(tiny_model_dir):
    tok = Tokenizer(tiny_model_dir)
    ids = tok.encode("Hello")  # starts with <|begin_of_text|>
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.add([t]) for t in ids) == "Hello"
