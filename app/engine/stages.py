"""The model stages of a step: title and outline, paragraph (streamed), memory, plans and the auto-mode choice.

Each stage renders its prompt (prompts/), asks the model a bounded number of times and checks every answer with a
parser (app/engine/parsing.py); after the last try it falls back visibly (a notice) or raises `EngineError`. The
stages read nothing from the store and write nothing: the orchestration (app/engine/core.py) does that.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from app.engine.context import ContextPreview
from app.engine.errors import EngineError
from app.engine.events import Event
from app.engine.parsing import (
    Parsed,
    candidate_plans,
    copies_text,
    drop_repeated_sentences,
    merge_plans,
    parse_choice,
    parse_memory,
    parse_paragraph,
    parse_title_outline,
)
from app.engine.prompts import PromptLibrary
from app.engine.reading import NovelView
from app.engine.text import limit_words, sentences

FALLBACK_PLANS = [
    "Continue the scene from where it stopped, with a new detail.",
    "Bring in a complication that makes the main character act.",
    "Reveal something unexpected about a character or the place.",
]
CHOICE_TOKENS = 6
# How much text one memory update reads at once: the memory prompt (old summary, the text, the instructions) stays
# well inside the smallest context window we run (SmolLM2-135M, 8k tokens) with room for the answer.
MEMORY_CHUNK_WORDS = 600
# How much of the writer's changed text a step's memory stage folds in before the new paragraph (four chunks: a
# step stays a step); Update memory now reads all of it.
MAX_STEP_CATCH_UP_WORDS = 4 * MEMORY_CHUNK_WORDS


def memory_chunks(texts: list[str], max_words: int) -> list[str]:
    """`texts` joined (a blank line apart) into chunks of at most `max_words` words, each text whole unless it is
    longer than that (then only its first `max_words` words)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for text in texts:
        text = limit_words(text, max_words) if len(text.split()) > max_words else text
        words = len(text.split())
        if current and size + words > max_words:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(text)
        size += words
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _latest_within(texts: list[str], max_words: int) -> list[str]:
    """The last texts of `texts` whose words add up to at most `max_words` (at least the last one)."""
    kept: list[str] = []
    size = 0
    for text in reversed(texts):
        words = min(len(text.split()), MEMORY_CHUNK_WORDS)
        if kept and size + words > max_words:
            break
        kept.insert(0, text)
        size += words
    return kept


@dataclass
class ModelStages:
    """The stages over one model (TextGenerator) and one prompt library; `max_attempts` overrides the novel's."""

    generator: object
    prompts: PromptLibrary
    max_attempts: int | None = None

    def attempts(self, view: NovelView) -> int:
        return max(1, int(self.max_attempts or view.setting("max_attempts")))

    def _sampling(self, view: NovelView, attempt: int, *, temperature_cap: float | None = None):
        params = view.config.sampling_params()
        if params.seed is not None:
            params.seed = params.seed + attempt
        if temperature_cap is not None and params.temperature > temperature_cap:
            params.temperature = temperature_cap
        return params

    def _complete(self, rendered, view: NovelView, attempt: int, max_new_tokens: int, cancel,
                  temperature_cap: float | None = 0.7) -> str:
        prompt = self.generator.render_chat(rendered.messages) + rendered.answer_prefix
        pieces = self.generator.stream(prompt, sampling=self._sampling(view, attempt, temperature_cap=temperature_cap),
                                       max_new_tokens=max_new_tokens, cancel=cancel)
        return rendered.answer_prefix + "".join(pieces)

    def title_outline(self, view: NovelView, cancel, notices: list[str]) -> tuple[str | None, str]:
        """A proposed title (None when the model gave none) and outline ("" after the last failed try, said in
        `notices`) for a novel's premise."""
        rendered = self.prompts.render("start", premise=view.premise, style=view.style)
        title: str | None = None
        outline = ""
        problem = ""
        for attempt in range(self.attempts(view)):
            title_parsed, outline_parsed = parse_title_outline(
                self._complete(rendered, view, attempt, int(view.setting("title_tokens")), cancel))
            title = title or title_parsed.value
            if outline_parsed.ok:
                outline = outline_parsed.value
                break
            problem = outline_parsed.problem
        if not outline:
            notices.append(f"No usable outline in {self.attempts(view)} tries ({problem}): the opening is "
                           "written from the premise alone.")
        return title, outline

    def paragraph(self, view: NovelView, preview: ContextPreview, cancel, notices: list[str],
                  state=None) -> Iterator[Event]:
        """Stream the paragraph (retrying a bounded number of times); the last event's text is the paragraph."""
        earlier = [text for _, text in view.paragraphs]
        problem = ""
        repeated = ""
        for attempt in range(self.attempts(view)):
            if attempt:
                yield Event("reset", f"Retrying the paragraph ({problem}).")
            raw = yield from self._paragraph_attempt(view, preview, attempt, cancel, state)
            parsed = parse_paragraph(raw)
            if parsed.ok:
                fresh = drop_repeated_sentences(parsed.value, earlier)
                if fresh.ok:
                    repairs = [r for r in (parsed.problem, fresh.problem) if r]
                    if repairs:
                        notices.append(f"Paragraph repaired: {'; '.join(repairs)}.")
                    yield Event("paragraph", fresh.value)
                    return
                # Mostly a copy of earlier paragraphs: worth another try; kept as the last resort.
                repeated = repeated or parsed.value
                problem = fresh.problem
            else:
                problem = parsed.problem
        if repeated:
            notices.append("Every try mostly repeated earlier paragraphs; the last one was kept as written: "
                           "rewrite it, retry, or raise the repetition penalties in Settings.")
            yield Event("paragraph", repeated)
            return
        raise EngineError(f"The model gave no usable paragraph in {self.attempts(view)} tries ({problem}); "
                          "nothing was saved. Try again, or change the plan or the sampling settings.")

    def _paragraph_attempt(self, view: NovelView, preview: ContextPreview, attempt: int, cancel,
                           state) -> Iterator[Event]:
        """One try at the paragraph: each piece as a token event, stopped at a blank line once a full-length
        paragraph is there; returns the raw text. `state` (manuscript-state strategy) is cloned, never advanced."""
        target = int(view.setting("paragraph_words"))
        penalties = view.config.penalty_params()
        history = "\n\n".join(text for _, text in view.paragraphs) if penalties.active else ""
        raw = ""
        attempt_state = self.generator.backend.clone_state(state) if state is not None else None
        stream = self.generator.stream(
            preview.prompt_text, sampling=self._sampling(view, attempt), penalties=penalties,
            max_new_tokens=int(view.setting("max_new_tokens")), cancel=cancel, penalty_history=history,
            state=attempt_state)
        try:
            for piece in stream:
                raw += piece
                yield Event("token", piece)
                # One paragraph is enough: stop at a blank line once a full-length paragraph is there.
                if "\n\n" in raw.strip():
                    parsed = parse_paragraph(raw.strip().split("\n\n")[0])
                    if parsed.ok and len(parsed.value.split()) >= target * 0.6:
                        break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return raw

    def memory(self, view: NovelView, paragraph: str, cancel, notices: list[str]) -> str:
        """The memory after a step: it folds in the paragraphs changed since it was last updated (`view.pending`,
        the latest MAX_STEP_CATCH_UP_WORDS of them), then the new paragraph."""
        pending = [text for _, text in view.pending]
        kept = _latest_within(pending, MAX_STEP_CATCH_UP_WORDS)
        if len(kept) < len(pending):
            notices.append(f"The memory read the last {len(kept)} of the {len(pending)} paragraphs changed since "
                           "it was updated; use Update memory now for all of them.")
        events = self.catch_up(view, [*kept, paragraph], cancel, notices)
        while True:
            try:
                next(events)
            except StopIteration as finished:
                return finished.value

    def catch_up(self, view: NovelView, texts: list[str], cancel, notices: list[str]) -> Iterator[Event]:
        """Fold `texts` into the memory, a chunk of at most MEMORY_CHUNK_WORDS words at a time (a longer paragraph
        is read up to that length), streaming each answer as token events (a reset before the next chunk);
        returns the memory. A chunk with no usable answer keeps the memory so far (a notice says so)."""
        memory = view.memory
        chunks = memory_chunks(texts, MEMORY_CHUNK_WORDS)
        if any(len(text.split()) > MEMORY_CHUNK_WORDS for text in texts):
            notices.append(f"A paragraph longer than {MEMORY_CHUNK_WORDS} words was summarized from its first "
                           f"{MEMORY_CHUNK_WORDS} words.")
        for number, chunk in enumerate(chunks, start=1):
            if len(chunks) > 1:
                yield Event("progress", f"Updating the memory: part {number} of {len(chunks)}…")
            memory = yield from self._fold(view, memory, chunk, cancel, notices)
        return memory

    def _fold(self, view: NovelView, memory: str, text: str, cancel, notices: list[str]) -> Iterator[Event]:
        """One chunk folded into `memory` (bounded tries), streamed; returns the new memory."""
        max_words = int(view.setting("memory_words"))
        rendered = self.prompts.render("memory", memory=memory, paragraph=text, max_words=max_words)
        problem = ""
        for attempt in range(self.attempts(view)):
            yield Event("reset", "Updating the memory…" if not attempt else f"Retrying the memory ({problem}).")
            prompt = self.generator.render_chat(rendered.messages) + rendered.answer_prefix
            raw = rendered.answer_prefix
            for piece in self.generator.stream(prompt, sampling=self._sampling(view, attempt, temperature_cap=0.7),
                                               max_new_tokens=int(max_words * 1.6) + 16, cancel=cancel):
                raw += piece
                yield Event("token", piece)
            parsed = parse_memory(raw, max_words)
            if parsed.ok:
                yield Event("memory", parsed.value)
                return parsed.value
            problem = parsed.problem
        if memory.strip():
            notices.append(f"The model gave no usable memory in {self.attempts(view)} tries ({problem}): "
                           "the previous memory was kept; edit it in the Memory tab if it needs the new events.")
            return memory
        fallback = limit_words(" ".join(sentences(text)[:3]), max_words)
        notices.append(f"The model gave no usable memory in {self.attempts(view)} tries ({problem}): the memory "
                       "starts as the paragraph's first sentences; edit it in the Memory tab.")
        return fallback

    def plans(self, view: NovelView, memory: str, paragraph: str, cancel, notices: list[str]) -> list[str]:
        rendered = self.prompts.render("plans", premise=view.premise, memory=memory, paragraph=paragraph)
        pooled: list[str] = []
        for attempt in range(self.attempts(view)):
            raw = self._complete(rendered, view, attempt, int(view.setting("plan_tokens")), cancel,
                                 temperature_cap=None)
            # A sentence copied from the paragraph is not a plan for the next one.
            pooled = merge_plans(pooled, [plan for plan in candidate_plans(raw) if not copies_text(plan, paragraph)])
            if len(pooled) == 3:
                return pooled
        missing = 3 - len(pooled)
        plans = merge_plans(pooled, FALLBACK_PLANS)
        notices.append(f"The model proposed only {3 - missing} usable plan(s) in {self.attempts(view)} tries: "
                       f"{missing} stock plan(s) were added; rewrite them as you like.")
        return plans

    def choose(self, view: NovelView, cancel, notices: list[str]) -> int:
        """Auto mode: the model picks one of the pending plans (bounded retries, then the first plan)."""
        numbered = "\n".join(f"{i}. {plan}" for i, plan in enumerate(view.plans, 1))
        rendered = self.prompts.render("choose", memory=view.memory, plans=numbered)
        for attempt in range(self.attempts(view)):
            parsed: Parsed[int] = parse_choice(
                self._complete(rendered, view, attempt, CHOICE_TOKENS, cancel)[len(rendered.answer_prefix):],
                len(view.plans))
            if parsed.ok:
                return parsed.value
        notices.append("The model did not pick a plan: the first plan was used.")
        return 0
