"""Real NLTK data packages for a closed vocabulary (tests and the offline demo world).

CHAIR (OPERA ``chair.py``) and AMBER (``inference.py``) run ``nltk.word_tokenize``,
``nltk.pos_tag`` and ``WordNetLemmatizer.lemmatize``. Those need three data packages that
cannot be downloaded here. :func:`build_mini_nltk_data` writes small packages in the exact
on-disk formats that NLTK 3.10 reads, so the *real* NLTK functions run on them:

``tokenizers/punkt_tab/english/``
    ``collocations.tab``, ``sent_starters.txt``, ``abbrev_types.txt``, ``ortho_context.tab``
    (read by ``nltk.tokenize.punkt.load_punkt_params``). Only ``abbrev_types`` is filled
    (a few abbreviations); the rest is empty, so Punkt splits sentences on ``. ? !``.
``taggers/averaged_perceptron_tagger_eng/``
    ``averaged_perceptron_tagger_eng.{weights,tagdict,classes}.json`` (read by
    ``PerceptronTagger.load_from_json``). Every lexicon word is in the tag dictionary with
    its listed tag (plus its capitalised form); the only weight is ``bias -> default_tag``,
    so any out-of-vocabulary word is tagged ``default_tag`` (``NN``).
``corpora/wordnet/``
    ``lexnames``, ``index.{noun,verb,adj,adv}``, ``data.{noun,verb,adj,adv}`` (valid byte
    offsets, one synset per lemma), ``{noun,verb,adj,adv}.exc``, ``index.sense``,
    ``cntlist.rev`` (the files ``WordNetCorpusReader.__init__`` opens). The lemma of each
    lexicon word is indexed under the WordNet POS of its tag (J->a, V->v, N->n, R->r); if
    WordNet's own detachment rules (``cups -> cup``) would not give the listed lemma, an
    exception line is written (``mice mouse`` in ``noun.exc``). Words with other tags
    (DT, IN, ...) are lemmatised as nouns by CHAIR: their lemma is indexed as a noun only
    when it differs from the word, and an exception pins the listed lemma whenever the
    noun rules would otherwise reach another indexed form (``as`` -> ``a``).

The builder finally loads the packages with the real NLTK readers and checks that every
lexicon word gets its listed tag (in isolation) and lemma; a mismatch is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

__all__ = ["build_mini_nltk_data", "WN_POS_OF_TAG", "DEFAULT_ABBREVIATIONS"]

#: Penn tag first letter -> WordNet POS, as in OPERA chair.py ``get_wordnet_pos``.
WN_POS_OF_TAG = {"J": "a", "V": "v", "N": "n", "R": "r"}

#: Abbreviations written into the mini Punkt model (lower case, no final period).
DEFAULT_ABBREVIATIONS = ("dr", "mr", "mrs", "ms", "st", "e.g", "i.e", "etc", "vs")

#: Tags always present in the tag dictionary (Penn Treebank conventions).
_PUNCT_TAGS = {
    ".": ".",
    "!": ".",
    "?": ".",
    ",": ",",
    ";": ":",
    ":": ":",
    "(": "(",
    ")": ")",
    "``": "``",
    "''": "''",
    "'s": "POS",
    "n't": "RB",
    "-": ":",
    "--": ":",
}

# WordNet lexicographer files (the standard 45, index = line number).
_LEXNAMES = [
    ("adj.all", 3),
    ("adj.pert", 3),
    ("adv.all", 4),
    ("noun.Tops", 1),
    ("noun.act", 1),
    ("noun.animal", 1),
    ("noun.artifact", 1),
    ("noun.attribute", 1),
    ("noun.body", 1),
    ("noun.cognition", 1),
    ("noun.communication", 1),
    ("noun.event", 1),
    ("noun.feeling", 1),
    ("noun.food", 1),
    ("noun.group", 1),
    ("noun.location", 1),
    ("noun.motive", 1),
    ("noun.object", 1),
    ("noun.person", 1),
    ("noun.phenomenon", 1),
    ("noun.plant", 1),
    ("noun.possession", 1),
    ("noun.process", 1),
    ("noun.quantity", 1),
    ("noun.relation", 1),
    ("noun.shape", 1),
    ("noun.state", 1),
    ("noun.substance", 1),
    ("noun.time", 1),
    ("verb.body", 2),
    ("verb.change", 2),
    ("verb.cognition", 2),
    ("verb.communication", 2),
    ("verb.competition", 2),
    ("verb.consumption", 2),
    ("verb.contact", 2),
    ("verb.creation", 2),
    ("verb.emotion", 2),
    ("verb.motion", 2),
    ("verb.perception", 2),
    ("verb.possession", 2),
    ("verb.social", 2),
    ("verb.stative", 2),
    ("verb.weather", 2),
    ("adj.ppl", 3),
]
_LEXFILE_OF_POS = {"a": 0, "r": 2, "n": 3, "v": 29}
_SS_TYPE_NUM = {"n": 1, "v": 2, "a": 3, "r": 4}
_FILE_OF_POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# WordNet detachment rules (WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS).
_RULES = {
    "n": [
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    "v": [
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}
_HEADER = (
    "  1 Minimal WordNet-format database written by vcdflow.metrics.nltk_mini for a closed\n"
    "  2 test vocabulary. It is NOT Princeton WordNet and carries none of its content.\n"
)


def _wn_pos(tag: str) -> str | None:
    return WN_POS_OF_TAG.get(tag[:1]) if tag else None


def _morphy_result(word: str, pos: str, index: set[str], exceptions: dict[str, list[str]]) -> str:
    """What ``WordNetLemmatizer.lemmatize(word, pos)`` returns for this index (mirrors NLTK)."""
    if word in exceptions:
        forms = exceptions[word]
    else:
        forms = [word[: -len(old)] + new for old, new in _RULES[pos] if word.endswith(old)]
    found = [f for f in [word] + forms if f in index]
    return min(found, key=len) if found else word


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def build_mini_nltk_data(
    out_dir: str | os.PathLike,
    lexicon: Mapping[str, tuple[str, str]],
    *,
    default_tag: str = "NN",
    abbreviations: tuple[str, ...] = DEFAULT_ABBREVIATIONS,
    verify: bool = True,
) -> Path:
    """Write punkt_tab, averaged_perceptron_tagger_eng and wordnet packages to ``out_dir``.

    Args:
        out_dir: the NLTK data root to create (``tokenizers/``, ``taggers/``, ``corpora/``
            go below it); pass it as ``nltk_data`` to the CHAIR / AMBER scorers.
        lexicon: ``word -> (penn_tag, lemma)``, e.g. ``{"cups": ("NNS", "cup"),
            "mice": ("NNS", "mouse"), "is": ("VBZ", "be"), "a": ("DT", "a")}``. Words are
            tokens as ``nltk.word_tokenize`` yields them (lower case for CHAIR).
        default_tag: tag of every word not in the lexicon.
        abbreviations: Punkt abbreviation types (lower case, without the final period).
        verify: reload with the real NLTK readers and check every tag and lemma.

    Returns the data root as a ``Path``.
    """
    out = Path(out_dir)
    if not lexicon:
        raise ValueError("build_mini_nltk_data: empty lexicon")
    for word, entry in lexicon.items():
        if not isinstance(word, str) or not word or any(c.isspace() for c in word):
            raise ValueError(f"build_mini_nltk_data: bad lexicon word {word!r} (one token, no spaces)")
        if not (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and all(isinstance(x, str) and x for x in entry)
        ):
            raise ValueError(
                f"build_mini_nltk_data: lexicon[{word!r}] must be (penn_tag, lemma), got {entry!r}"
            )
        if any(c.isspace() for c in entry[1]):
            raise ValueError(f"build_mini_nltk_data: lemma of {word!r} has spaces: {entry[1]!r}")

    # --- punkt_tab -----------------------------------------------------------------
    punkt = out / "tokenizers" / "punkt_tab" / "english"
    _write(punkt / "collocations.tab", "")
    _write(punkt / "sent_starters.txt", "")
    _write(punkt / "ortho_context.tab", "")
    _write(punkt / "abbrev_types.txt", "".join(f"{a}\n" for a in abbreviations))

    # --- averaged perceptron tagger -------------------------------------------------
    tagdict: dict[str, str] = dict(_PUNCT_TAGS)
    for word, (tag, _lemma) in lexicon.items():
        tagdict[word] = tag
    for word, (tag, _lemma) in lexicon.items():
        cap = word[:1].upper() + word[1:]
        tagdict.setdefault(cap, tag)
    classes = sorted(set(tagdict.values()) | {default_tag})
    weights = {"bias": {default_tag: 1.0}}
    tagger_dir = out / "taggers" / "averaged_perceptron_tagger_eng"
    for name, obj in (("weights", weights), ("tagdict", tagdict), ("classes", classes)):
        _write(tagger_dir / f"averaged_perceptron_tagger_eng.{name}.json", json.dumps(obj, sort_keys=True))

    # --- wordnet ---------------------------------------------------------------------
    lemmas: dict[str, set[str]] = {p: set() for p in _FILE_OF_POS}
    wanted: list[tuple[str, str, str]] = []  # (word, wn_pos used by CHAIR, lemma)
    for word, (tag, lemma) in lexicon.items():
        pos = _wn_pos(tag)
        if pos is not None:
            lemmas[pos].add(lemma)
        else:
            pos = "n"  # CHAIR lemmatises every other tag as a noun
            if lemma != word:
                lemmas[pos].add(lemma)
        wanted.append((word, pos, lemma))
    exceptions: dict[str, dict[str, list[str]]] = {p: {} for p in _FILE_OF_POS}
    for word, pos, lemma in wanted:
        if _morphy_result(word, pos, lemmas[pos], exceptions[pos]) != lemma:
            exceptions[pos][word] = [lemma]
            if _morphy_result(word, pos, lemmas[pos], exceptions[pos]) != lemma:
                raise ValueError(
                    f"build_mini_nltk_data: cannot make WordNet lemmatise {word!r} ({pos}) to "
                    f"{lemma!r}: a shorter indexed form wins; change the lexicon"
                )

    wn = out / "corpora" / "wordnet"
    _write(wn / "lexnames", "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(_LEXNAMES)))
    sense_lines = []
    for pos, fname in _FILE_OF_POS.items():
        data = _HEADER
        offsets: dict[str, int] = {}
        lexfile = _LEXFILE_OF_POS[pos]
        for lemma in sorted(lemmas[pos]):
            offset = len(data.encode("utf-8"))
            offsets[lemma] = offset
            data += f"{offset:08d} {lexfile:02d} {pos} 01 {lemma} 0 000 | {lemma} (mini lexicon entry)  \n"
        _write(wn / f"data.{fname}", data)
        _write(
            wn / f"index.{fname}",
            _HEADER + "".join(f"{lem} {pos} 1 0 1 0 {offsets[lem]:08d}  \n" for lem in sorted(lemmas[pos])),
        )
        _write(
            wn / f"{fname}.exc", "".join(f"{w} {' '.join(ls)}\n" for w, ls in sorted(exceptions[pos].items()))
        )
        for lem in sorted(lemmas[pos]):
            sense_lines.append(f"{lem}%{_SS_TYPE_NUM[pos]}:{lexfile:02d}:00:: {offsets[lem]:08d} 1 0\n")
    _write(wn / "index.sense", "".join(sorted(sense_lines)))
    _write(wn / "cntlist.rev", "")

    if verify:
        _verify(out, lexicon, wanted)
    return out


def _verify(root: Path, lexicon: Mapping[str, tuple[str, str]], wanted) -> None:
    from vcdflow.metrics.chair import NltkTools  # local import: chair imports nothing from here

    tools = NltkTools(root)
    bad = []
    for word, (tag, _lemma) in lexicon.items():
        got = tools.pos_tag([word])[0][1]
        if got != tag:
            bad.append(f"tag({word!r}) = {got!r}, wanted {tag!r}")
    for word, pos, lemma in wanted:
        got = tools.lemmatize(word, pos)
        if got != lemma:
            bad.append(f"lemmatize({word!r}, {pos!r}) = {got!r}, wanted {lemma!r}")
    if bad:
        raise RuntimeError(f"build_mini_nltk_data: {root} does not reproduce the lexicon: " + "; ".join(bad))
