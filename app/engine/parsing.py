"""Reading what a (possibly tiny) model wrote: the paragraph, the memory, three plans, a title and outline, a choice.

Every parser is a pure function that returns a `Parsed` (the value, or None with the reason), never raises on bad
model output, and accepts the usual ways a small model drifts from the format: chatty preambles ("Sure! Here is
..."), markdown, section markers renamed or translated ("Option 2 -", "Titre :", "Opción 1:"), endless text cut by
the token limit, and loops. The engine decides what to do with a None (retry, then a visible fallback).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.engine.text import cut_loop, limit_words, normalized_sentence, sentences, trim_to_sentence, words

T = TypeVar("T")

MIN_PARAGRAPH_WORDS = 8
MIN_MEMORY_WORDS = 5
MIN_PLAN_WORDS = 3
MAX_PLAN_WORDS = 40
MAX_TITLE_WORDS = 12

_SPECIAL = re.compile(r"<\|[^|>]{1,40}\|>|</?s>|\[/?INST\]")
_PREAMBLE = re.compile(
    r"^\s*(sure|certainly|of course|okay|ok|here is|here's|here are|below is|absolutely|great)\b", re.IGNORECASE)
_LABEL = re.compile(
    r"^\s*[*_#>\s]*(next paragraph|new paragraph|paragraph(?: \d+)?|the next paragraph|story|continuation|"
    r"summary|updated summary|new summary|memory|updated memory|short-term memory|résumé|resumen|zusammenfassung|"
    r"párrafo|paragraphe|absatz)\s*[*_]*\s*[:：\-–—]\s*", re.IGNORECASE)
_META_LINE = re.compile(
    r"^\s*[*_#>\s]*(plan|plans|note|notes|summary|word count|words|next|idea|ideas|option|options|"
    r"\(?\d+ words)\b[^\n]*[:：]?", re.IGNORECASE)
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "first": 1, "second": 2, "third": 3,
    "uno": 1, "dos": 2, "tres": 3, "un": 1, "une": 1, "deux": 2, "trois": 3, "eins": 1, "zwei": 2, "drei": 3,
    "a": 1, "b": 2, "c": 3, "i": 1, "ii": 2, "iii": 3, "一": 1, "二": 2, "三": 3,
}
# A list marker at the start of a line: "1.", "2)", "(3)", "- 1:", "Plan 2:", "Option B -", "Opción 1:",
# "Idée n°2 :", "**3.**", "III." — an optional word, then a number/letter/number word, then punctuation.
_ITEM = re.compile(
    r"^\s*[*_#>•\-–—\s]*(?:\(\s*)?"
    r"(?:(?P<word>[^\W\d_]{2,15})\s*(?:#|n[°ºo]\.?\s*|nr\.?\s*|no\.?\s*)?)?"
    r"(?P<num>\d{1,2}|[ABCabc]|iii|ii|i|III|II|I|one|two|three|uno|dos|tres|un|deux|trois|eins|zwei|drei|一|二|三)"
    r"\s*(?:[.)\]:：\-–—]|\*\*)+[*_\s]*(?P<rest>.*)$", re.UNICODE)
_BULLET = re.compile(r"^\s*[*•\-–—]\s+(?P<rest>.+)$")
_TITLE_MARK = re.compile(
    r"^\s*[*_#>\s]*(?:book |novel |story |working )?(title|titre|título|titulo|titel|titolo|name|nom|nombre|"
    r"标题|題名|タイトル)\s*[*_]*\s*[:：\-–—]\s*(?P<rest>.*)$", re.IGNORECASE)
_OUTLINE_MARK = re.compile(
    r"^\s*[*_#>\s]*(outline|synopsis|summary|plot|premise|résumé|resume|resumen|sinopsis|esquema|"
    r"zusammenfassung|handlung|trama|riassunto|intrigue|概要|大纲|あらすじ)\s*[*_]*\s*[:：\-–—]\s*(?P<rest>.*)$",
    re.IGNORECASE)


# A "plan" that talks about the list instead of the story ("These are three possible outcomes...").
_META_PLAN = re.compile(r"\b(these (are|ideas|options)|possible (outcomes|scenarios|ideas|directions)|"
                        r"(next|this) paragraph|three (ideas|options|plans))\b", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed(Generic[T]):
    value: T | None
    problem: str = ""  # why value is None (or what was repaired), in words

    @property
    def ok(self) -> bool:
        return self.value is not None


def clean_model_text(raw: str) -> str:
    """Remove chat-format tokens that leaked into the text and normalize line ends."""
    return _SPECIAL.sub("", raw or "").replace("\r\n", "\n").replace("\r", "\n")


def _strip_markup(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^[*_`#>\s]+|[*_`\s]+$", "", text)
    if len(text) >= 2 and text[0] in "\"“'«" and text[-1] in "\"”'»" and text.count(text[0]) <= 2:
        text = text[1:-1].strip()
    return text


def _drop_preamble(lines: list[str]) -> list[str]:
    """Drop leading lines that talk about the answer instead of being it ("Sure! Here is the paragraph:")."""
    while lines:
        first = lines[0].strip()
        if not first:
            lines = lines[1:]
            continue
        short_intro = first.endswith((":", "：")) and len(first.split()) <= 20
        if short_intro or (_PREAMBLE.match(first) and (first.endswith((":", "!")) or len(first.split()) <= 12)):
            lines = lines[1:]
            continue
        break
    return lines


def parse_paragraph(raw: str, min_words: int = MIN_PARAGRAPH_WORDS) -> Parsed[str]:
    """The story paragraph in `raw`: preamble and trailing notes removed, a loop cut at its first repeat, an
    unfinished last sentence dropped. None if fewer than `min_words` words remain."""
    lines = _drop_preamble(clean_model_text(raw).split("\n"))
    kept: list[str] = []
    for line in lines:
        stripped = line.strip()
        if kept and (_META_LINE.match(stripped) and stripped.endswith((":", "："))
                     or stripped.startswith(("---", "***", "==="))):
            break
        if stripped:
            kept.append(_LABEL.sub("", stripped))
    text = _strip_markup(" ".join(kept))
    repaired = []
    looped = cut_loop(text)
    if looped != " ".join(sentences(text)):
        repaired.append("cut a repeated sentence")
        text = looped
    trimmed = trim_to_sentence(text)
    if trimmed != text:
        repaired.append("dropped an unfinished sentence")
        text = trimmed
    if len(words(text)) < min_words:
        return Parsed(None, "the answer held no paragraph" if not text else f"the paragraph was too short "
                      f"({len(words(text))} words)")
    return Parsed(text, "; ".join(repaired))


def drop_repeated_sentences(paragraph: str, earlier: list[str],
                            min_words: int = MIN_PARAGRAPH_WORDS) -> Parsed[str]:
    """`paragraph` without the sentences that repeat a sentence of the earlier paragraphs word for word (a small
    model's favourite loop: copying the last paragraph). None when too little new text is left."""
    seen = {normalized_sentence(s) for text in earlier for s in sentences(text)}
    kept = [s for s in sentences(paragraph) if len(words(s)) < 3 or normalized_sentence(s) not in seen]
    text = " ".join(kept)
    if len(words(text)) < min_words:
        return Parsed(None, "it repeated earlier paragraphs")
    dropped = len(sentences(paragraph)) - len(kept)
    return Parsed(text, f"dropped {dropped} sentence(s) repeated from earlier paragraphs" if dropped else "")


def parse_memory(raw: str, max_words: int, min_words: int = MIN_MEMORY_WORDS) -> Parsed[str]:
    """The updated summary in `raw`, at most `max_words` words. None when nothing usable came back."""
    lines = _drop_preamble(clean_model_text(raw).split("\n"))
    text = " ".join(_LABEL.sub("", line.strip()) for line in lines if line.strip())
    text = trim_to_sentence(cut_loop(_strip_markup(text)))
    text = limit_words(text, max_words)
    if len(words(text)) < min_words:
        return Parsed(None, "the answer held no summary" if not text else "the summary was too short")
    return Parsed(text)


def _item_number(match: re.Match) -> int | None:
    token = match.group("num")
    if token.isdigit():
        return int(token)
    return _NUMBER_WORDS.get(token.lower())


def _clean_plan(text: str) -> str:
    text = re.sub(r"\*\*|__|`", "", text)
    nested = _ITEM.match(text)
    if nested and _item_number(nested) is not None and nested.group("rest").strip():
        text = nested.group("rest")
    text = _strip_markup(_LABEL.sub("", text))
    parts = sentences(text)
    text = " ".join(parts[:2]) if parts else text
    return limit_words(text, MAX_PLAN_WORDS)


def _similar(a: str, b: str) -> bool:
    wa, wb = set(words(a)), set(words(b))
    if not wa or not wb:
        return False
    return len(wa & wb) / len(wa | wb) >= 0.8


def _split_inline_list(text: str) -> list[str]:
    # "1. Go north. 2. Go south. 3. Stay." on one line.
    return [p for p in re.split(r"\s+(?=(?:\(?\d{1,2}[.)]|[A-Ca-c]\))\s)", text) if p.strip()]


def candidate_plans(raw: str, limit: int = 6) -> list[str]:
    """Every usable, mutually distinct plan in `raw` (numbered in any language or style, bulleted, or one per line),
    in order, at most `limit`."""
    lines = _drop_preamble(clean_model_text(raw).split("\n"))
    expanded: list[str] = []
    for line in lines:
        expanded.extend(_split_inline_list(line) if len(re.findall(r"\b\d[.)]\s", line)) >= 2 else [line])
    items: list[str] = []
    marked = False
    for line in expanded:
        stripped = line.strip()
        if not stripped:
            continue
        match = _ITEM.match(stripped)
        number = _item_number(match) if match else None
        if match and number is not None and match.group("rest").strip():
            items.append(match.group("rest"))
            marked = True
            continue
        bullet = _BULLET.match(stripped)
        if bullet:
            items.append(bullet.group("rest"))
            marked = True
        elif items and marked:
            items[-1] += " " + stripped
        else:
            items.append(stripped)
    if len(items) == 1:
        items = sentences(items[0])
    return merge_plans([], [_clean_plan(item) for item in items], limit)


def merge_plans(plans: list[str], more: list[str], limit: int = 3) -> list[str]:
    """`plans` extended by those of `more` that are usable and not near-duplicates, at most `limit`."""
    merged = list(plans)
    for plan in more:
        if len(merged) >= limit:
            break
        if len(words(plan)) < MIN_PLAN_WORDS or plan.endswith((":", "：")) or _META_PLAN.search(plan):
            continue
        if any(_similar(plan, other) for other in merged):
            continue
        merged.append(plan)
    return merged


def copies_text(plan: str, text: str) -> bool:
    """True when `plan` is (nearly) a sentence of `text` copied out: a tiny model's usual non-plan."""
    return any(_similar(plan, sentence) for sentence in sentences(text))


def parse_plans(raw: str, want: int = 3) -> Parsed[list[str]]:
    """Exactly `want` distinct plans from `raw`, or None with how many were usable."""
    plans = candidate_plans(raw, want)
    if len(plans) == want:
        return Parsed(plans)
    return Parsed(None, f"found {len(plans)} usable plan(s) of {want}")


def _clean_title(text: str) -> str:
    text = _strip_markup(text)
    text = re.sub(r"\s*\((?:\d{4}|[^)]*\bby\b[^)]*)\)\s*$", "", text)
    text = re.sub(r"\s+by\s+[A-Z][\w.\- ]{0,40}$", "", text)
    text = _strip_markup(text.rstrip(" .:;-–—"))
    tokens = text.split()
    return " ".join(tokens[:MAX_TITLE_WORDS])


def parse_title_outline(raw: str) -> tuple[Parsed[str], Parsed[str]]:
    """(title, outline) from `raw`, which starts with the answer prefix "Title:"; either may be None."""
    lines = [line.strip() for line in clean_model_text(raw).split("\n") if line.strip()]
    title: str | None = None
    outline_parts: list[str] = []
    in_outline = False
    for index, line in enumerate(lines):
        title_match = _TITLE_MARK.match(line)
        outline_match = _OUTLINE_MARK.match(line)
        if title_match and title is None and not in_outline:
            rest_of_line = title_match.group("rest")
            title = _clean_title(rest_of_line)
            # "Title: X. Outline: Y" on one line.
            inline = re.split(r"\s+(?=(?:outline|synopsis|summary|plot|résumé|resumen|sinopsis)\s*[:：])",
                              rest_of_line, maxsplit=1, flags=re.IGNORECASE)
            if len(inline) == 2:
                title = _clean_title(inline[0])
                rest = _OUTLINE_MARK.match(inline[1])
                if rest:
                    outline_parts.append(rest.group("rest"))
                    in_outline = True
        elif outline_match:
            in_outline = True
            if outline_match.group("rest"):
                outline_parts.append(outline_match.group("rest"))
        elif title is None and index == 0:
            title = _clean_title(line)
        elif in_outline or title is not None:
            if _TITLE_MARK.match(line):
                break
            outline_parts.append(line)
            in_outline = True
    outline = trim_to_sentence(cut_loop(_strip_markup(" ".join(outline_parts))))
    outline = " ".join(sentences(outline)[:3])
    title_result = Parsed(title) if title and len(words(title)) >= 1 else Parsed(None, "no title in the answer")
    outline_result = Parsed(outline) if len(words(outline)) >= 6 else Parsed(None, "no outline in the answer")
    return title_result, outline_result


def parse_choice(raw: str, count: int) -> Parsed[int]:
    """The 0-based index of the plan the model picked ("2", "number two", "Option B", "the second")."""
    text = clean_model_text(raw).lower()
    for token in re.findall(r"\d+|[^\W\d_]+", text)[:12]:
        number = int(token) if token.isdigit() else _NUMBER_WORDS.get(token) if len(token) > 1 else None
        if number is not None and 1 <= number <= count:
            return Parsed(number - 1)
    return Parsed(None, "no plan number in the answer")
