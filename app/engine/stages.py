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
        max_words = int(view.setting("memory_words"))
        rendered = self.prompts.render("memory", memory=view.memory, paragraph=paragraph, max_words=max_words)
        problem = ""
        for attempt in range(self.attempts(view)):
            parsed = parse_memory(self._complete(rendered, view, attempt, int(max_words * 1.6) + 16, cancel),
                                  max_words)
            if parsed.ok:
                return parsed.value
            problem = parsed.problem
        if view.memory.strip():
            notices.append(f"The model gave no usable memory in {self.attempts(view)} tries ({problem}): "
                           "the previous memory was kept; edit it in the Memory tab if it needs the new events.")
            return view.memory
        fallback = limit_words(" ".join(sentences(paragraph)[:3]), max_words)
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
