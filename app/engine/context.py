"""The context builder: what the next paragraph's prompt contains, how many tokens each section takes, and what is
dropped when it does not fit the budget.

The same function builds the prompt the engine sends and the preview the inspector shows, so the preview is the
exact text. The memory comes in three tiers (issue 15): the synopsis of the book so far, the summaries of the closed
chapters most relevant to the plan, the open chapter's summary so far, and the short-term memory.

Truncation order (TRUNCATION_ORDER, tested): drop retrieved passages (lowest score first), triggered lore, the
outline, the style notes, chapter summaries (least relevant first), always-on lore; then shorten (halve, then drop
below MIN_KEEP_WORDS) the last paragraph (keeping its end), the memory, the open chapter's summary, the synopsis and
the premise. The instruction and the plan are never cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.prompts import INSTRUCTION, PromptLibrary, Rendered

PROMPT_ONLY = "prompt-only"
MANUSCRIPT_STATE = "manuscript-state"

# Sections in the order the inspector lists them; slots not listed here (voice, words) belong to the instruction.
# The premise and the memory lead: the memory and plans prompts of the same step start with the same two sections
# (worded the same), so a backend that reuses a shared prompt prefix reads them once per step (issue 16).
SECTION_ORDER = ("instruction", "premise", "memory", "outline", "style", "bible", "synopsis", "chapters",
                 "chapter_so_far", "retrieved", "last_paragraph", "plan")
# What `_Fitter.drop_one` removes first, then shortens; the instruction and the plan are not in it: never cut.
TRUNCATION_ORDER = ("retrieved", "triggered lore", "outline", "style", "chapters", "always-on lore",
                    "last_paragraph", "memory", "chapter_so_far", "synopsis", "premise")
MIN_KEEP_WORDS = 20


class ContextTooLargeError(ValueError):
    """Even with every optional section dropped, the instruction and plan do not fit the budget."""


@dataclass
class LoreItem:
    name: str
    body: str
    always_on: bool


@dataclass
class RetrievedItem:
    position: int
    text: str
    score: float
    why: str = ""  # memory.retrieval.Hit.why(): vector or lexical rank, and the sentence that matched
    sentence: str = ""


@dataclass
class ChapterSummaryItem:
    """A closed chapter's summary, with how relevant it is to the plan (higher first kept)."""

    position: int
    title: str
    text: str
    score: float = 0.0
    stale: bool = False


@dataclass
class ContextInputs:
    """Everything a paragraph prompt can hold, as plain values read in one short transaction."""

    premise: str = ""
    outline: str = ""
    style: str = ""
    lore: list[LoreItem] = field(default_factory=list)
    memory: str = ""
    retrieved: list[RetrievedItem] = field(default_factory=list)
    retrieval_notice: str = ""  # memory.rerank.Reranked.notice: why the LM rerank was skipped, if it was
    last_paragraph: str = ""
    plan: str = ""
    voice: str = ""
    words: int = 120
    synopsis: str = ""
    chapters: list[ChapterSummaryItem] = field(default_factory=list)  # in book order
    chapter_so_far: str = ""  # the open chapter's summary so far
    paragraph: str = ""  # the rewrite stage: the paragraph being rewritten (never cut)
    instruction: str = ""  # the rewrite stage: what the writer asked for (never cut)


@dataclass
class Section:
    name: str
    text: str
    tokens: int
    kept: bool = True
    truncated: bool = False


@dataclass
class ContextPreview:
    """The exact next-step prompt: `prompt_text` is what the model reads (after any manuscript state)."""

    stage: str
    strategy: str
    sections: list[Section]
    budget: int
    total_tokens: int
    prompt_text: str
    rendered: Rendered
    dropped: list[str] = field(default_factory=list)
    plan: str = ""
    manuscript_tokens: int = 0  # manuscript-state only: tokens the model reads (or restores) before the prompt
    retrieved: list[RetrievedItem] = field(default_factory=list)  # the passages kept in the prompt, best first
    retrieval_notice: str = ""  # why the LM rerank was skipped, if it was (ContextInputs.retrieval_notice)

    @property
    def messages(self) -> list[dict]:
        return self.rendered.messages


def _bible_text(lore: list[LoreItem]) -> str:
    return "\n".join(f"- {item.name}: {item.body}" for item in lore)


def _retrieved_text(items: list[RetrievedItem]) -> str:
    return "\n".join(f"(paragraph {item.position}) {item.text}" for item in items)


def _chapters_text(items: list[ChapterSummaryItem]) -> str:
    return "\n".join(f"- {item.title}: {item.text}" for item in sorted(items, key=lambda i: i.position))


def _head_words(text: str, count: int) -> str:
    return " ".join(text.split()[:count])


def _tail_words(text: str, count: int) -> str:
    tokens = text.split()
    return ("… " if len(tokens) > count else "") + " ".join(tokens[-count:])


# The input a template slot is filled from, where their names differ (the rest share their name).
_SLOT_INPUTS = {"bible": "lore"}


class _Fitter:
    """What is left to put in the prompt. Inputs the stage's template has no slot for are emptied first: the
    document prompts (continue_*) hold fewer sections than the instruction prompts, and what a template cannot
    show must neither be dropped to make room (it takes none) nor be reported as dropped or kept."""

    def __init__(self, inputs: ContextInputs, template_slots: frozenset[str]):
        self.premise = inputs.premise
        self.outline = inputs.outline
        self.style = inputs.style
        self.lore = list(inputs.lore)
        self.memory = inputs.memory
        self.retrieved = list(inputs.retrieved)
        self.last_paragraph = inputs.last_paragraph
        self.plan = inputs.plan
        self.voice = inputs.voice
        self.words = inputs.words
        self.synopsis = inputs.synopsis
        self.chapters = list(inputs.chapters)
        self.chapter_so_far = inputs.chapter_so_far
        self.paragraph = inputs.paragraph
        self.instruction = inputs.instruction
        self.dropped: list[str] = []
        self.truncated: set[str] = set()
        for slot in self.slots().keys() - template_slots:
            name = _SLOT_INPUTS.get(slot, slot)
            setattr(self, name, type(getattr(self, name))())

    def slots(self) -> dict[str, object]:
        return {"premise": self.premise, "outline": self.outline, "style": self.style,
                "bible": _bible_text(self.lore), "memory": self.memory, "retrieved": _retrieved_text(self.retrieved),
                "last_paragraph": self.last_paragraph, "plan": self.plan, "voice": self.voice, "words": self.words,
                "synopsis": self.synopsis, "chapters": _chapters_text(self.chapters),
                "chapter_so_far": self.chapter_so_far,
                "paragraph": self.paragraph, "instruction": self.instruction}

    def _shorten(self, name: str, keep_end: bool) -> bool:
        text = getattr(self, name)
        count = len(text.split())
        if count == 0:
            return False
        if count <= MIN_KEEP_WORDS:
            setattr(self, name, "")
            self.dropped.append(f"{name.replace('_', ' ')} (dropped)")
            return True
        keep = count // 2
        setattr(self, name, _tail_words(text, keep) if keep_end else _head_words(text, keep))
        self.truncated.add(name)
        self.dropped.append(f"{name.replace('_', ' ')} (shortened to {keep} words)")
        return True

    def drop_one(self) -> bool:
        """Remove the least important remaining piece; False when only the instruction and plan are left."""
        if self.retrieved:
            item = self.retrieved.pop()
            self.dropped.append(f"retrieved paragraph {item.position}")
            return True
        triggered = [i for i, item in enumerate(self.lore) if not item.always_on]
        if triggered:
            item = self.lore.pop(triggered[-1])
            self.dropped.append(f"lore entry {item.name!r}")
            return True
        for name in ("outline", "style"):
            if getattr(self, name):
                setattr(self, name, "")
                self.dropped.append(name)
                return True
        if self.chapters:
            least = min(range(len(self.chapters)), key=lambda i: (self.chapters[i].score, -self.chapters[i].position))
            item = self.chapters.pop(least)
            self.dropped.append(f"summary of {item.title!r}")
            return True
        if self.lore:
            item = self.lore.pop()
            self.dropped.append(f"lore entry {item.name!r} (always on)")
            return True
        return (self._shorten("last_paragraph", keep_end=True) or self._shorten("memory", keep_end=False)
                or self._shorten("chapter_so_far", keep_end=False) or self._shorten("synopsis", keep_end=False)
                or self._shorten("premise", keep_end=False))


def build_context(library: PromptLibrary, generator, inputs: ContextInputs, budget: int, *, stage: str = "paragraph",
                  strategy: str = PROMPT_ONLY) -> ContextPreview:
    """Render `stage` from `inputs`, dropping the least important sections until the prompt fits `budget` tokens."""
    template_slots = library.slots(stage)
    fitter = _Fitter(inputs, template_slots)
    had = {name: bool(value) for name, value in fitter.slots().items()}
    while True:
        rendered = library.render(stage, **{k: v for k, v in fitter.slots().items() if k in template_slots})
        prompt_text = rendered.prompt_text(generator)
        total = generator.count_tokens(prompt_text)
        if total <= budget:
            break
        if not fitter.drop_one():
            raise ContextTooLargeError(
                f"The instruction and plan alone take {total} tokens, more than the {budget}-token budget: "
                "shorten the plan or raise the context budget.")
    sections = []
    counted = 0
    for name in SECTION_ORDER[1:]:
        text = rendered.section_text(name)
        tokens = generator.count_tokens(text) if text else 0
        counted += tokens
        if text or had.get(name if name != "bible" else "bible"):
            sections.append(Section(name, text, tokens, kept=bool(text), truncated=name in fitter.truncated))
    instruction_text = "".join(p.text for p in rendered.pieces if p.section not in SECTION_ORDER[1:])
    sections.insert(0, Section(INSTRUCTION, instruction_text, max(0, total - counted)))
    return ContextPreview(stage=stage, strategy=strategy, sections=sections, budget=budget, total_tokens=total,
                          prompt_text=prompt_text, rendered=rendered, dropped=fitter.dropped, plan=inputs.plan,
                          retrieved=list(fitter.retrieved), retrieval_notice=inputs.retrieval_notice)
