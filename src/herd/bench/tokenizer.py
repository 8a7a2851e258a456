"""Token counting and prompt synthesis with the target's tokenizer when one is available.

transformers is imported lazily; without it, or without the tokenizer files, counts fall back
to an approximation (one common English word is about one Llama-3 token) and say so."""

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Short common words: each is a single token (with its leading space) in Llama-3's tokenizer,
# so a prompt of N of them is close to N tokens even when the real tokenizer is missing.
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their has been if more when will would "
    "who so no time about out up into can said some could them other then than its only two "
    "first new these may any like over also after most people made world such what just where"
).split()


@dataclass
class Tokenizer:
    """Counts tokens the way the target does: its Hugging Face tokenizer when one can be loaded
    (`kind` "hf"), otherwise an approximation by words (`kind` "approx", with a `note` saying
    so); also makes synthetic text of a given token length."""

    name: str
    kind: str  # "hf" (the target's tokenizer) or "approx" (word count)
    note: str = ""
    _hf: object = None

    def count(self, text: str) -> int:
        if self._hf is not None:
            return len(self._hf.encode(text, add_special_tokens=False))
        return len(text.split())

    def make_text(self, rng: np.random.Generator, n_tokens: int) -> str:
        """Random text of about `n_tokens` tokens (exactly, with a real tokenizer)."""
        if n_tokens <= 0:
            return ""
        if self._hf is None:
            return " ".join(rng.choice(WORDS, size=n_tokens).tolist())
        vocab = getattr(self._hf, "vocab_size", 32000)
        ids = rng.integers(low=min(1000, vocab // 2), high=vocab, size=n_tokens).tolist()
        # decode/encode is not an identity; trim on the re-encoded ids so the length is exact.
        text = self._hf.decode(ids, skip_special_tokens=True)
        ids = self._hf.encode(text, add_special_tokens=False)[:n_tokens]
        return self._hf.decode(ids, skip_special_tokens=True)


def load_tokenizer(explicit: str = "", model: str = "") -> Tokenizer:
    """Explicit name/path first (may download); else the model name from local files only
    (never a surprise download); else the word approximation."""
    for name, local_only in ((explicit, False), (model, True)):
        if not name:
            continue
        hf = _try_hf(name, local_only)
        if hf is not None:
            return Tokenizer(name=name, kind="hf", _hf=hf)
        if explicit and name == explicit:
            note = f"tokenizer {explicit!r} could not be loaded; token counts approximated by words"
            log.warning(note)
            return Tokenizer(name="words", kind="approx", note=note)
    note = "no target tokenizer (pass --tokenizer); prompt lengths approximated by words"
    return Tokenizer(name="words", kind="approx", note=note)


def _try_hf(name: str, local_only: bool):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except Exception as exc:  # any failure (missing files, bad repo) means: fall back
        log.debug("tokenizer %s unavailable: %s", name, exc)
        return None
