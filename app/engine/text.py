"""Plain-text helpers shared by the parsers and the quality benchmark: sentences, n-grams, repetition and loops.

No model, no database: pure functions over strings, so the benchmark measures exactly what the engine checks.
"""

from __future__ import annotations

import re
from collections import Counter

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)


def sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace-normalized, split after . ! ? … (and any closing quote)."""
    out = []
    for block in re.split(r"\n\s*\n|\n", text):
        for part in _SENTENCE_END.split(block.strip()):
            part = " ".join(part.split())
            if part:
                out.append(part)
    return out


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalized_sentence(sentence: str) -> str:
    return " ".join(words(sentence))


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts (word level, lower-cased); 0 when there are none."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        grams.extend(ngrams(words(text), n))
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_sentence_share(texts: list[str], min_words: int = 3) -> float:
    """Share of sentences (of at least `min_words` words) that repeat an earlier sentence exactly (normalized)."""
    seen: set[str] = set()
    total = repeated = 0
    for text in texts:
        for sentence in sentences(text):
            key = normalized_sentence(sentence)
            if len(key.split()) < min_words:
                continue
            total += 1
            if key in seen:
                repeated += 1
            seen.add(key)
    return repeated / total if total else 0.0


def is_looping(text: str, *, ngram: int = 4, max_repeats: int = 3, min_words: int = 3) -> bool:
    """A paragraph caught in a loop: one sentence said three times or more, or one 4-gram of it more than
    `max_repeats` times with little else around it (the tell-tale of a model stuck repeating itself)."""
    counts = Counter(normalized_sentence(s) for s in sentences(text) if len(words(s)) >= min_words)
    if counts and counts.most_common(1)[0][1] >= 3:
        return True
    tokens = words(text)
    grams = Counter(ngrams(tokens, ngram))
    if not grams:
        return False
    gram, count = grams.most_common(1)[0]
    return count > max_repeats and count * ngram >= 0.3 * len(tokens)


def cut_loop(text: str, min_words: int = 3) -> str:
    """`text` up to the first sentence that repeats an earlier sentence of it (normalized); unchanged if none."""
    seen: set[str] = set()
    kept: list[str] = []
    for sentence in sentences(text):
        key = normalized_sentence(sentence)
        if len(key.split()) >= min_words and key in seen:
            break
        seen.add(key)
        kept.append(sentence)
    return " ".join(kept)


def trim_to_sentence(text: str) -> str:
    """Drop an unfinished last sentence (a generation cut by the token limit); keep everything if none ended."""
    text = text.rstrip()
    if not text or text[-1] in ".!?…\"”’)":
        return text
    last = max(text.rfind(mark) for mark in ".!?…")
    if last <= 0:
        return text
    end = last + 1
    while end < len(text) and text[end] in "\"'”’)]":
        end += 1
    return text[:end].rstrip()


def limit_words(text: str, max_words: int) -> str:
    """At most `max_words` words, cut at a sentence end when one is inside the limit."""
    tokens = text.split()
    if len(tokens) <= max_words:
        return text.strip()
    cut = " ".join(tokens[:max_words])
    trimmed = trim_to_sentence(cut)
    return trimmed if trimmed != cut and len(trimmed.split()) >= max_words // 2 else cut
