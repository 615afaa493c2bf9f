"""CHAIR inputs of the demo world: synonyms file and a closed-vocabulary NLTK data folder.

The real CHAIR scorer (OPERA ``chair.py`` logic, NLTK tokenise + POS tag + WordNet lemmatise)
runs unchanged on the demo world. NLTK's data packages cannot be downloaded offline, so the
demo world writes its own, in NLTK's real formats, covering exactly its vocabulary
(:func:`vcdflow.metrics.nltk_mini.build_mini_nltk_data`): every category word and synonym,
plurals tagged ``NNS`` with their singular lemma, and the function words of its captions.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import replace_dir
from ..metrics.nltk_mini import build_mini_nltk_data
from .demo_world import CATEGORIES, write_chair_synonyms

FUNCTION_WORDS: dict[str, tuple[str, str]] = {
    "a": ("DT", "a"),
    "an": ("DT", "an"),
    "the": ("DT", "the"),
    "and": ("CC", "and"),
    "of": ("IN", "of"),
    "in": ("IN", "in"),
    "with": ("IN", "with"),
    "there": ("EX", "there"),
    "is": ("VBZ", "be"),
    "are": ("VBP", "be"),
    "picture": ("NN", "picture"),
    "image": ("NN", "image"),
    "yes": ("UH", "yes"),
    "no": ("UH", "no"),
    ",": (",", ","),
    ".": (".", "."),
}


def _singular(word: str, vocabulary: set[str]) -> str | None:
    for cand in (
        word[:-3] + "y" if word.endswith("ies") else None,
        word[:-2] if word.endswith("es") else None,
        word[:-1] if word.endswith("s") else None,
    ):
        if cand and cand in vocabulary:
            return cand
    return None


def demo_lexicon() -> dict[str, tuple[str, str]]:
    """``word -> (penn_tag, lemma)`` for every token of the demo world's captions and synonyms."""
    lexicon = dict(FUNCTION_WORDS)
    for cat in CATEGORIES:
        words = {w for syn in cat.synonyms for w in syn.split()}
        for word in sorted(words):
            single = _singular(word, words)
            lexicon[word] = ("NNS", single) if single else ("NN", word)
    return lexicon


def build_demo_nltk_data(out_dir: str | os.PathLike) -> Path:
    """Write (atomically: temp folder, then rename) the demo world's NLTK data folder."""
    import shutil
    import tempfile

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build_mini_nltk_data(tmp, demo_lexicon())
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["build_demo_nltk_data", "demo_lexicon", "write_chair_synonyms"]
