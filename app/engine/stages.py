"""The model stages of a step: title and outline, paragraph (streamed), memory, plans and the auto-mode choice.

Each stage renders its prompt (prompts/), asks the model a bounded number of times and checks every answer with a
parser (app/engine/parsing.py) and the continuity guards (app/engine/continuity.py: leaked prompt text stripped,
the voice checked, an overlong paragraph trimmed, the memory's rewrite validated); after the last try it falls back
visibly (a notice) or raises `EngineError`. The stages read nothing from the store and write nothing: the
orchestration (app/engine/core.py) does that.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from app.engine.context import ContextPreview
from app.engine.continuity import Voice, entities, memory_problem, strip_leaks, trim_to_length, voice_problem
from app.engine.errors import EngineError
from app.engine.events import Event
from app.engine.parsing import (
    MIN_PARAGRAPH_WORDS,
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
from app.engine.text import limit_words, normalized_sentence, sentences, words

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

# A paragraph longer than this many times `paragraph_words` is trimmed at a sentence end to TRIM_TO times it
# (LongWriter's length score: 83 at 1.5x, 93 at 1.2x).
TRIM_ABOVE = 1.5
TRIM_TO = 1.2
# A paragraph shorter than this many times `paragraph_words` is continued by the model toward the target (the
# length score is 79 at 0.7x, 50 at 0.5x); a continuation needs this many words of new story to be kept.
CONTINUE_BELOW = 0.7
MIN_CONTINUATION_WORDS = 3


@dataclass
class ModelStages:
    """The stages over one model (TextGenerator) and one prompt library; `max_attempts` overrides the novel's."""

    generator: object
    prompts: PromptLibrary
    max_attempts: int | None = None
    embedder: object = None  # memory.retrieval.Embedder: picks the salient sentence of the memory's fallback

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
                  state=None, voice: Voice | None = None, lengthen: bool = True) -> Iterator[Event]:
        """Stream the paragraph (retrying a bounded number of times); the last event's text is the paragraph.

        Each try is parsed, stripped of leaked prompt text, cleared of sentences repeated from earlier paragraphs and
        checked for `voice`; a try that fails is retried. After the last try, a usable paragraph in the wrong voice
        (or mostly repeating earlier ones) is kept with a notice; none at all raises `EngineError`. The kept
        paragraph is continued by the model when it stops far short of `paragraph_words` (`_lengthen`; not when
        `lengthen` is off) and trimmed at a sentence end when it runs far past it. Every repair is a notice."""
        earlier = [text for _, text in view.paragraphs]
        problem = ""
        kept_anyway: tuple[str, str, list[str]] | None = None  # (text, why it failed, its repairs)
        for attempt in range(self.attempts(view)):
            if attempt:
                yield Event("reset", f"Retrying the paragraph ({problem}).")
            raw = yield from self._paragraph_attempt(view, preview, attempt, cancel, state)
            candidate, problem, repairs = self._check_paragraph(raw, earlier, voice)
            if candidate is not None and not problem:
                if lengthen:
                    candidate = yield from self._lengthen(view, preview, candidate, earlier, voice, cancel, state,
                                                          repairs, notices)
                yield Event("paragraph", self._finish_paragraph(view, candidate, repairs, notices))
                return
            # Kept as the last resort: the first usable try, one in the wrong voice before one that repeats.
            if candidate is not None and (kept_anyway is None or (kept_anyway[1].startswith("it repeated")
                                                                  and not problem.startswith("it repeated"))):
                kept_anyway = (candidate, problem, repairs)
        if kept_anyway is not None:
            text, why, repairs = kept_anyway
            if why.startswith("it repeated"):
                notices.append("Every try mostly repeated earlier paragraphs; the last one was kept as written: "
                               "rewrite it, retry, or raise the repetition penalties in Settings.")
            else:
                notices.append(f"Every try was written {why.removeprefix('it was written ')}; the first was kept: "
                               "rewrite it or retry.")
            if lengthen:
                text = yield from self._lengthen(view, preview, text, earlier, voice, cancel, state, repairs, notices)
            yield Event("paragraph", self._finish_paragraph(view, text, repairs, notices))
            return
        raise EngineError(f"The model gave no usable paragraph in {self.attempts(view)} tries ({problem}); "
                          "nothing was saved. Try again, or change the plan or the sampling settings.")

    @staticmethod
    def _check_paragraph(raw: str, earlier: list[str], voice: Voice | None) -> tuple[str | None, str, list[str]]:
        """(paragraph or None, why it fails the guards or "", the repairs made) for one try's raw text."""
        parsed = parse_paragraph(raw)
        if not parsed.ok:
            return None, parsed.problem, []
        repairs = [parsed.problem] if parsed.problem else []
        stripped = strip_leaks(parsed.value)
        if len(words(stripped.text)) < MIN_PARAGRAPH_WORDS:
            return None, "it was prompt text, not story", []
        repairs.extend(stripped.repairs)
        fresh = drop_repeated_sentences(stripped.text, earlier)
        if not fresh.ok:
            return stripped.text, fresh.problem, repairs
        if fresh.problem:
            repairs.append(fresh.problem)
        wrong_voice = voice_problem(fresh.value, voice) if voice is not None else ""
        return fresh.value, f"it was written {wrong_voice}" if wrong_voice else "", repairs

    def _lengthen(self, view: NovelView, preview: ContextPreview, text: str, earlier: list[str],
                  voice: Voice | None, cancel, state, repairs: list[str], notices: list[str]) -> Iterator[Event]:
        """`text` continued by the model when it is shorter than CONTINUE_BELOW times `paragraph_words`: the step's
        own prompt with `text` as the answer so far, asked for about the missing words (at most `attempts` requests,
        until it is long enough). A continuation is kept only when it is story: parsed, stripped of leaked prompt
        text, no sentence repeated from earlier paragraphs or from `text`, in `voice`. Returns the text; what was
        added goes into `repairs`, a refused continuation that added nothing into a notice (none when the model
        ended the paragraph at once: its call)."""
        target = int(view.setting("paragraph_words"))
        written = len(text.split())
        if written >= target * CONTINUE_BELOW:
            return text
        problem = ""  # why the last continuation was refused; "" when the model ended the paragraph itself
        for attempt in range(self.attempts(view)):
            yield Event("progress", f"Continuing the paragraph ({len(text.split())} words of about {target})…")
            raw = yield from self._continuation_attempt(view, preview, text, earlier, attempt, cancel, state)
            if not raw.strip():
                # The model ended the paragraph there: its call, with the length in plain view (no notice).
                problem = ""
                break
            addition, problem = self._check_continuation(raw, text, earlier, voice)
            if addition:
                text = f"{text} {addition}"
                if len(text.split()) >= target * CONTINUE_BELOW:
                    break
        if len(text.split()) > written:
            repairs.append(f"continued from {written} to {len(text.split())} words (about {target} asked)")
        elif problem:
            notices.append(f"The paragraph stopped at {written} words of about {target}, and the model's "
                           f"continuation added nothing usable ({problem}): it was "
                           "kept as written; extend it in the manuscript, or retry.")
        return text

    def _continuation_attempt(self, view: NovelView, preview: ContextPreview, text: str, earlier: list[str],
                              attempt: int, cancel, state) -> Iterator[Event]:
        """One request to continue `text`: its pieces as token events (the first with a space before it, so the
        shown paragraph reads on), stopped at a blank line; returns the raw continuation. `state` is cloned, never
        advanced."""
        target = int(view.setting("paragraph_words"))
        missing = max(1, target - len(text.split()))
        penalties = view.config.penalty_params()
        history = "\n\n".join([*earlier, text]) if penalties.active else ""
        attempt_state = self.generator.backend.clone_state(state) if state is not None else None
        stream = self.generator.stream(
            preview.prompt_text + text, sampling=self._sampling(view, self.attempts(view) + attempt),
            penalties=penalties, max_new_tokens=min(int(view.setting("max_new_tokens")), int(missing * 1.6) + 16),
            cancel=cancel, penalty_history=history, state=attempt_state)
        raw = ""
        with closing(stream):  # a stop at the blank line ends the model's generation there too
            for piece in stream:
                if not raw.strip() and piece.strip() and not piece[:1].isspace():
                    piece = " " + piece
                raw += piece
                yield Event("token", piece)
                if "\n\n" in raw.strip():
                    break
        return raw

    @staticmethod
    def _check_continuation(raw: str, text: str, earlier: list[str], voice: Voice | None) -> tuple[str, str]:
        """(the story a continuation adds to `text`, or "", and why not) for one request's raw answer."""
        parsed = parse_paragraph(raw.strip().split("\n\n")[0], min_words=MIN_CONTINUATION_WORDS)
        if not parsed.ok:
            return "", parsed.problem
        stripped = strip_leaks(parsed.value)
        if len(words(stripped.text)) < MIN_CONTINUATION_WORDS:
            return "", "it was prompt text, not story"
        fresh = drop_repeated_sentences(stripped.text, [*earlier, text], min_words=MIN_CONTINUATION_WORDS)
        if not fresh.ok:
            return "", "it repeated the paragraph or earlier ones"
        wrong_voice = voice_problem(fresh.value, voice) if voice is not None else ""
        if wrong_voice:
            return "", f"it was written {wrong_voice}"
        return fresh.value, ""

    @staticmethod
    def _finish_paragraph(view: NovelView, text: str, repairs: list[str], notices: list[str]) -> str:
        """The kept paragraph trimmed at a sentence end when overlong; its repairs said in one notice."""
        target = int(view.setting("paragraph_words"))
        if len(text.split()) > target * TRIM_ABOVE:
            trimmed = trim_to_length(text, round(target * TRIM_TO))
            text = trimmed.text
            repairs = [*repairs, *trimmed.repairs]
        if repairs:
            notices.append(f"Paragraph repaired: {'; '.join(repairs)}.")
        return text

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
        with closing(stream):  # a stop at the blank line ends the model's generation there too
            for piece in stream:
                raw += piece
                yield Event("token", piece)
                # One paragraph is enough: stop at a blank line once a full-length paragraph is there.
                if "\n\n" in raw.strip():
                    parsed = parse_paragraph(raw.strip().split("\n\n")[0])
                    if parsed.ok and len(parsed.value.split()) >= target * 0.6:
                        break
        return raw

    def memory(self, view: NovelView, paragraph: str, cancel, notices: list[str]) -> tuple[str, str]:
        """(the memory after a step, its origin). It folds in the paragraphs changed since it was last updated
        (`view.pending`, the latest MAX_STEP_CATCH_UP_WORDS of them), then the new paragraph."""
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
        returns (the memory, its origin: "extractive" when any chunk needed the visible fallback)."""
        memory, origin = view.memory, "generated"
        chunks = memory_chunks(texts, MEMORY_CHUNK_WORDS)
        if any(len(text.split()) > MEMORY_CHUNK_WORDS for text in texts):
            notices.append(f"A paragraph longer than {MEMORY_CHUNK_WORDS} words was summarized from its first "
                           f"{MEMORY_CHUNK_WORDS} words.")
        known = [text for _, text in view.paragraphs]
        manuscript = known + [text for text in texts if text not in set(known)]
        for number, chunk in enumerate(chunks, start=1):
            if len(chunks) > 1:
                yield Event("progress", f"Updating the memory: part {number} of {len(chunks)}…")
            memory, chunk_origin = yield from self._fold(view, memory, chunk, manuscript, cancel, notices)
            if chunk_origin == "extractive":
                origin = "extractive"
        return memory, origin

    def _fold(self, view: NovelView, memory: str, text: str, manuscript: list[str], cancel,
              notices: list[str]) -> Iterator[Event]:
        """One chunk folded into `memory`, streamed; returns (the new memory, its origin). The model's rewrite must
        parse, differ from the old memory, name something of the chunk and copy no paragraph of `manuscript`;
        after the last try the extractive fallback (the old memory plus the chunk's most salient sentence) is
        used, with origin "extractive" and a notice."""
        max_words = int(view.setting("memory_words"))
        rendered = self.prompts.render("memory", premise=view.premise, memory=memory, paragraph=text,
                                       max_words=max_words)
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
            if not parsed.ok:
                problem = parsed.problem
                continue
            problem = memory_problem(memory, parsed.value, text, manuscript)
            if not problem:
                yield Event("memory", parsed.value)
                return parsed.value, "generated"
        fallback = extractive_memory(memory, text, max_words, self.embedder)
        notices.append(f"The model gave no usable memory in {self.attempts(view)} tries ({problem}): the memory "
                       "is the previous one plus the new paragraph's most telling sentence (marked 'extractive' in "
                       "the Memory tab's history); edit it there if it needs more.")
        yield Event("memory", fallback)
        return fallback, "extractive"

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
        rendered = self.prompts.render("choose", premise=view.premise, memory=view.memory, plans=numbered)
        for attempt in range(self.attempts(view)):
            parsed: Parsed[int] = parse_choice(
                self._complete(rendered, view, attempt, CHOICE_TOKENS, cancel)[len(rendered.answer_prefix):],
                len(view.plans))
            if parsed.ok:
                return parsed.value
        notices.append("The model did not pick a plan: the first plan was used.")
        return 0


def salient_sentence(paragraph: str, embedder=None, skip: str = "") -> str:
    """The sentence of `paragraph` closest to the paragraph as a whole (cosine of MiniLM vectors with their mean),
    among those naming a character or place when any does (so the memory names something of the paragraph),
    leaving out sentences already in `skip`; the longest one without an embedder."""
    seen = {normalized_sentence(s) for s in sentences(skip)}
    candidates = [s for s in sentences(paragraph) if normalized_sentence(s) not in seen and len(words(s)) >= 3]
    candidates = [s for s in candidates if entities(s)] or candidates
    if not candidates:
        return ""
    if embedder is None or len(candidates) == 1:
        return max(candidates, key=lambda s: len(words(s)))
    vectors = np.asarray(embedder.embed(candidates), dtype=np.float32)  # [S, D]
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    centre = vectors.mean(axis=0)  # [D]
    return candidates[int(np.argmax(vectors @ centre))]


def extractive_memory(old: str, paragraph: str, max_words: int, embedder=None) -> str:
    """The memory's visible fallback: `old` plus the new paragraph's most salient sentence, within `max_words`
    (the oldest sentences of `old` give way first; a sentence longer than the limit is cut at a word)."""
    sentence = limit_words(salient_sentence(paragraph, embedder, skip=old), max_words)
    kept = sentences(old)
    while kept and len(" ".join([*kept, sentence]).split()) > max_words:
        kept.pop(0)
    return " ".join([*kept, sentence]).strip() or limit_words(paragraph, max_words)
