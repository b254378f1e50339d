"""Whether the text is one story: pure measures of continuity (carry-over of names, restarts, leaked prompt text,
memory movement and copying, person and tense, length against the target) and the repairs the engine's guards
make with them (stripping leaked labels and meta-text, trimming an overlong paragraph at a sentence end).

No model, no database, no embedder: functions over strings, so bench/continuity.py measures exactly what the
engine's guards check, and the Story chart shows the same figures per paragraph. Every measure is defined so that
it can fail: each is tested on hand-made text in tests/engine/test_continuity.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.engine.text import sentences, words

# Capitalized words that are not names: function words and pronouns a sentence (or a line of dialogue) starts with.
_NOT_NAMES = frozenset("""
a an the and but or nor so yet for if then than when while where after before as at by in on of off to up down
from into onto over under with without within about above across against along among around behind below beneath
beside between beyond during except inside near outside past since through throughout toward towards until upon
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves this that these those there here who whom whose which what
why how all any each every some no not none one two three first next last now once still even just only also too
very yes oh ah well perhaps maybe is was were are be been am do did does have had has will would can could shall
should may might must let chapter part mr mrs ms dr sir lady lord god today tomorrow yesterday tonight monday tuesday
wednesday thursday friday saturday sunday january february march april june july august september october november
december nothing everything something someone everyone nobody somebody everybody another such both either neither
again soon later never always sometimes often together alone instead otherwise however meanwhile suddenly finally
long new old many few most more much other others little great small big dark years days hours moments minutes
decades like yet
""".split())
_CAPITALIZED = re.compile(r"\b[A-Z][a-z]+(?:['’][a-z]+)?\b")
# A pronoun's or a name's contraction ("They'd", "Mara's"): the word is what stands before it.
_CONTRACTION = re.compile(r"['’](?:s|d|ll|re|ve|m|t)$")
# Where a word opens a sentence or a line of dialogue: nothing before it but quotes, brackets or dashes.
_OPENING_PREFIX = re.compile(r"^[\s\"“”'‘’(\[—–-]*$")
# Endings of common words that open sentences ("Slowly", "Centuries", "Approaching"), never taken for a name there.
_COMMON_ENDING = re.compile(r"(?:ly|ing|ed|ies|ness|ment|tion|sion|ous|ful|less|able|ible|wards?)$")
_CONTENT_WORD = re.compile(r"[a-z]{4,}")

# A paragraph that opens like a new story: fairy-tale formulas, dated openings, headings.
_RESTART = re.compile(
    r"^\W*(once upon a time|a long(,)? long time ago|a long time ago|long ago|long, long ago|in a (land|kingdom|"
    r"village|world|galaxy) far|in (the year |the )?\d{3,4}s?\b|there (once )?(was|lived) (a|an|once)\b|"
    r"it all (began|started)|"
    r"this is the story of|our story (begins|starts)|chapter \w+\b|prologue\b|title\s*:|the end\b)",
    re.IGNORECASE)

# Leaked prompt text, by kind. Labels: the retrieved passages' labels anywhere, and the prompt's own section
# headings where a heading stands (the start of a line or of a sentence, capitalized): "a plan: run" is story.
_LABEL = re.compile(
    r"\((?i:paragraph|passage|step)\s*\d+\)|\[(?i:paragraph|passage)\s*\d+\]|"
    r"(?:^|(?<=[.!?]\s)|(?<=[.!?][\"”’]\s))(?:Premise|Outline|Style|Story bible|What happened so far|"
    r"Earlier passages|Last paragraph|Plan for the next paragraph|Plan|Summary so far|"
    r"Ideas for the next paragraph|Notes for the next passage|New paragraph|Next paragraph|Paragraph\s*\d+|"
    r"PREMISE|PLAN)\s*:", re.MULTILINE)
# Section markers: chat-format tokens, the template's role headers, markdown rules and headings.
_MARKER = re.compile(r"<\|[^|>]{1,40}\|>|</?s>|\[/?(?:INST|system|user|answer|assistant)\]|^\s*(?:#{1,6}\s|---+|"
                     r"\*\*\*+|===+)", re.IGNORECASE | re.MULTILINE)
# The instruction copied into the story: its imperatives where a sentence starts, and its own phrases anywhere.
_INSTRUCTION = re.compile(
    r"^\W*(write (the|a|only|in|about)\b|this time,? take\b|take a different direction|focus(ing)? entirely on)|"
    r"\b(follow(ing)? the plan|do not repeat earlier|about \d+ words|in the (third|second|first) person|"
    r"(past|present) tense|continue from the last paragraph)\b", re.IGNORECASE)
# Text about the text: the paragraph, the summary, the story as a story, the reader.
_META = re.compile(
    r"\b(the|this|next|previous|last|first|new) (paragraph|summary)\b|\b(this|our|my) story\b|"
    r"\bthe story (begins|continues|ends|so far)\b|\bin this story\b|\bthe reader\b|\bthe protagonist\b",
    re.IGNORECASE)
# A list of titles: three or more capitalized phrases separated by commas, each of one to five words.
_TITLE_LIST = re.compile(r"^(?:[A-Z][\w'’]*(?:\s+(?:[A-Z][\w'’]*|of|the|a|an|and|in|on)){0,5}[:,]\s*){3,}")

LEAK_KINDS = ("label", "marker", "instruction", "meta", "title_list")

_FIRST = frozenset("i me my mine myself we us our ours ourselves".split())
_SECOND = frozenset("you your yours yourself yourselves".split())
_THIRD = frozenset("he him his himself she her hers herself they them their theirs themselves".split())
_PAST = frozenset("was were had did went came saw said told took made knew thought felt looked turned found gave "
                  "stood sat ran began left heard got kept held walked".split())
_PRESENT = frozenset("is are am has does go goes come comes see sees say says tell tells take takes make makes know "
                     "knows think thinks feel feels look looks turn turns find finds give gives stand stands".split())
_QUOTED = re.compile(r"[\"“][^\"”]*[\"”]")


@dataclass(frozen=True)
class Voice:
    """A requested narrative voice: person ("first", "second", "third") and tense ("past", "present")."""

    person: str
    tense: str

    def describe(self) -> str:
        return f"the {self.person} person, {self.tense} tense"


# The voice each mode's prompt asks for (app/engine/reading.py VOICES says it to the model in words).
MODE_VOICES = {"write": Voice("third", "past"), "interactive": Voice("second", "present")}


# ----------------------------------------------------------------------------------------------- names


def entities(text: str) -> set[str]:
    """Names of characters and places in `text`, lower-cased: capitalized words that are not function words or
    pronouns. A capitalized word that opens a sentence (or a line of dialogue) is a name only when it is capitalized
    elsewhere too, or it is never written in lower case in `text` and has no common word's ending: "Slowly",
    "Centuries" and "Rain ... the rain" are sentence openers, "Mara kept the lighthouse" names Mara."""
    lower = set(re.findall(r"\b[a-z]+\b", text))
    inside: set[str] = set()
    opening: set[str] = set()
    for sentence in sentences(text):
        for match in _CAPITALIZED.finditer(sentence):
            word = _CONTRACTION.sub("", match.group().lower())
            opens = bool(_OPENING_PREFIX.match(sentence[:match.start()]))
            (opening if opens else inside).add(word)
    kept_openers = {word for word in opening if word in inside
                    or (word not in lower and not (len(word) > 4 and _COMMON_ENDING.search(word)))}
    return (inside | kept_openers) - _NOT_NAMES


def content_words(text: str) -> set[str]:
    """Lower-case words of four letters or more that are not function words (the fallback when no names)."""
    return {word for word in _CONTENT_WORD.findall(text.lower()) if word not in _NOT_NAMES}


def carries_over(paragraph: str, previous: str, memory: str = "") -> bool:
    """Whether `paragraph` names a character or place named in the previous paragraph or the memory."""
    return bool(entities(paragraph) & (entities(previous) | entities(memory)))


def carry_over_share(paragraphs: list[str], memories: list[str] | None = None) -> float | None:
    """Share of paragraphs after the first that carry a name over from the paragraph before (or from the memory
    current when it was written: `memories[i]` is the memory before paragraph i). None with fewer than two."""
    if len(paragraphs) < 2:
        return None
    memories = memories or [""] * len(paragraphs)
    hits = sum(carries_over(paragraphs[i], paragraphs[i - 1], memories[i] if i < len(memories) else "")
               for i in range(1, len(paragraphs)))
    return hits / (len(paragraphs) - 1)


# ----------------------------------------------------------------------------------------------- restarts, leaks


def is_restart(paragraph: str) -> bool:
    """A paragraph that opens like a new story ("Once upon a time", "In 2017, a woman...", "Chapter One")."""
    return bool(_RESTART.match(paragraph.strip()))


def _narration_sentences(text: str) -> list[str]:
    """Each sentence of `text` with its dialogue removed (a character may well say "write the letter")."""
    return [_QUOTED.sub("", sentence).strip() for sentence in sentences(text)]


def leaks(paragraph: str) -> list[str]:
    """The kinds of prompt text in `paragraph` (a subset of LEAK_KINDS, in that order); empty when clean."""
    found = {
        "label": bool(_LABEL.search(paragraph)),
        "marker": bool(_MARKER.search(paragraph)),
        "instruction": any(_INSTRUCTION.search(bare) for bare in _narration_sentences(paragraph)),
        "meta": any(_META.search(bare) for bare in _narration_sentences(paragraph)),
        "title_list": bool(_TITLE_LIST.match(paragraph.strip())),
    }
    return [kind for kind in LEAK_KINDS if found[kind]]


@dataclass(frozen=True)
class Repaired:
    """A paragraph after a guard's repair: the text, and what was done in words (empty when nothing)."""

    text: str
    repairs: tuple[str, ...] = ()


def strip_leaks(paragraph: str) -> Repaired:
    """`paragraph` without leaked prompt text: labels and markers removed where they stand; a sentence that copies
    the instruction, talks about the paragraph or the story, or lists titles dropped whole."""
    repairs: list[str] = []
    text = _MARKER.sub(" ", paragraph)
    if text != paragraph:
        repairs.append("removed section markers")
    unlabelled = _LABEL.sub(" ", text)
    if unlabelled != text:
        repairs.append("removed prompt labels")
    kept = []
    dropped = 0
    for sentence in sentences(unlabelled):
        bare = _QUOTED.sub("", sentence)
        if _INSTRUCTION.search(bare) or _META.search(bare) or _TITLE_LIST.match(sentence):
            dropped += 1
            continue
        kept.append(sentence)
    if dropped:
        repairs.append(f"dropped {dropped} sentence(s) of instruction or talk about the text")
    return Repaired(" ".join(" ".join(kept).split()), tuple(repairs))


# ----------------------------------------------------------------------------------------------- memory


def longest_shared_run(a: str, b: str) -> int:
    """The length in words of the longest run of consecutive words `a` and `b` share (normalized words)."""
    wa, wb = words(a), words(b)
    best = 0
    previous = [0] * (len(wb) + 1)
    for x in wa:
        current = [0] * (len(wb) + 1)
        for j, y in enumerate(wb, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def copied_paragraph(memory: str, paragraphs: list[str]) -> int | None:
    """The index of the first paragraph from which `memory` copies more than half of its words in one run; None
    when it copies none (a summary, not a paragraph's sentences pasted)."""
    count = len(words(memory))
    if count == 0:
        return None
    for index, paragraph in enumerate(paragraphs):
        if longest_shared_run(memory, paragraph) * 2 > count:
            return index
    return None


def memory_moved(old: str, new: str, paragraph: str) -> bool:
    """The memory changed and names something of the new paragraph: one of its names, or (a paragraph without
    names) one of its content words the old memory did not have."""
    if words(new) == words(old):
        return False
    names = entities(paragraph)
    if names:
        return bool(entities(new) & names)
    return bool((content_words(paragraph) - content_words(old)) & content_words(new))


def memory_problem(old: str, new: str, paragraph: str, paragraphs: list[str]) -> str:
    """Why `new` is no usable rewrite of the memory after `paragraph` ("" when it is): unchanged, naming nothing
    of the new paragraph, or copying a paragraph of `paragraphs` (the manuscript with the new paragraph last)."""
    if words(new) == words(old):
        return "the memory did not change"
    if not memory_moved(old, new, paragraph):
        return "the memory names nothing of the new paragraph"
    copied = copied_paragraph(new, paragraphs)
    if copied is not None:
        return f"the memory copies paragraph {copied + 1} instead of summarizing"
    return ""


# ----------------------------------------------------------------------------------------------- voice


def _narration_words(text: str) -> list[str]:
    """The words outside dialogue (a character may say "I" in a third-person story)."""
    return words(_QUOTED.sub(" ", text))


def person_of(text: str) -> str | None:
    """The grammatical person of the narration: the person whose pronouns are the majority outside dialogue;
    None when there are no personal pronouns."""
    counts = {"first": 0, "second": 0, "third": 0}
    for word in _narration_words(text):
        if word in _FIRST:
            counts["first"] += 1
        elif word in _SECOND:
            counts["second"] += 1
        elif word in _THIRD:
            counts["third"] += 1
    total = sum(counts.values())
    if not total:
        return None
    person, count = max(counts.items(), key=lambda item: item[1])
    return person if count * 2 > total else None


def tense_of(text: str) -> str | None:
    """"past" or "present" by the majority of common verbs (and -ed forms) outside dialogue; None when unclear."""
    past = present = 0
    for word in _narration_words(text):
        if word in _PAST or (len(word) > 4 and word.endswith("ed")):
            past += 1
        elif word in _PRESENT:
            present += 1
    if past == present:
        return None
    return "past" if past > present else "present"


def voice_problem(text: str, voice: Voice) -> str:
    """How `text` departs from `voice` ("" when it does not): a narration whose person or tense is another.
    Text whose person or tense cannot be told passes."""
    problems = []
    person = person_of(text)
    if person is not None and person != voice.person:
        problems.append(f"in the {person} person, not the {voice.person}")
    tense = tense_of(text)
    if tense is not None and tense != voice.tense:
        problems.append(f"in the {tense} tense, not the {voice.tense}")
    return " and ".join(problems)


def voice_ok(text: str, voice: Voice) -> bool:
    return not voice_problem(text, voice)


# ----------------------------------------------------------------------------------------------- length


def length_score(written_words: int, target_words: int) -> float:
    """LongWriter's length score S_l (Bai et al. 2024) in [0, 100]: 100 at the target; an overlong text loses a
    third of the excess ratio, a short one half of the shortfall ratio (100 * (1 - (l'/l - 1) / 3) above,
    100 * (1 - (l/l' - 1) / 2) below), never below 0."""
    if target_words <= 0:
        raise ValueError(f"the target must be a positive number of words, got {target_words}")
    if written_words <= 0:
        return 0.0
    if written_words > target_words:
        score = 100 * (1 - (written_words / target_words - 1) / 3)
    else:
        score = 100 * (1 - (target_words / written_words - 1) / 2)
    return max(0.0, score)


def trim_to_length(text: str, max_words: int) -> Repaired:
    """`text` cut at the last sentence end within `max_words` words (at least the first sentence is kept)."""
    parts = sentences(text)
    if len(text.split()) <= max_words or not parts:
        return Repaired(text)
    kept = [parts[0]]
    for sentence in parts[1:]:
        if len(" ".join(kept + [sentence]).split()) > max_words:
            break
        kept.append(sentence)
    return Repaired(" ".join(kept), (f"trimmed at a sentence end to {len(' '.join(kept).split())} words "
                                     f"(it ran to {len(text.split())})",))
