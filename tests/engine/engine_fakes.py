"""A scripted fake LM for engine unit tests (`ScriptedGenerator`, a TextGenerator look-alike whose answers each
test writes per stage) and helpers to drain engine generators and compare database states."""

from __future__ import annotations

import re
from dataclasses import dataclass

from models.errors import Cancelled

STAGE_MARKERS = {
    "start": "Invent a title",
    "memory": "Rewrite the summary",
    "plans": "three different ideas",
    "choose": "Which idea makes",
    "opening": "Write the first paragraph",
    "paragraph": "Write the next paragraph",
    "chapter_summary": "Summarize this chapter",
    "synopsis": "Write a synopsis",
    "chapter_outline": "Plan this novel chapter by chapter",
    "rewrite": "Rewrite this paragraph",
}
# The document strategy's prompts (prompts/continue_*.txt) are scripted as the stages they stand for.
DOCUMENT_MARKERS = {
    "opening": "Notes on the novel, before it begins",
    "paragraph": "Notes on the novel, for the next passage",
}

GOOD = {
    "start": " The Keeper of Skerry\nOutline: Mara finds a bottle with a note in her own hand. She learns what it means.",
    "opening": "Mara kept the lighthouse on Skerry alone. Every morning she walked the shore below the cliff and "
               "counted the gulls. One grey morning a green bottle lay in the weed, and inside it was a note.",
    "paragraph": "Mara climbed the spiral stair with the note in her fist. The lamp room smelled of paraffin and "
                 "salt. She read the words again by the last light: do not light the lamp tonight. The hand was hers.",
    "memory": "Mara keeps the Skerry lighthouse alone. She found a note in her own handwriting warning her not to "
              "light the lamp tonight.",
    "plans": " Mara lights the lamp anyway and waits.\n2. A boat appears in the storm without lights.\n"
             "3. Mara searches the logbook for her own handwriting.",
    "choose": " 2",
    "chapter_summary": "Mara finds a note in her own hand and climbs to the lamp room, where the warning waits.",
    "chapter_outline": " A bottle washes up with a note in Mara's hand.\nChapter 2: Mara rows to the reef to find "
                       "who wrote it.\nChapter 3: The storm tells her the truth.",
    "synopsis": "Mara, the keeper of Skerry, finds a warning in her own hand and must decide about the lamp.",
    "rewrite": "The note shook in Mara's fist as she climbed. Paraffin, salt, the last light. Do not light the lamp "
               "tonight, it said, and the hand that wrote it was her own.",
}


def moving_memory(call) -> str:
    """The default memory answer: GOOD["memory"] for the first memory, then a new version at every step (the
    engine refuses a memory that did not change), numbered by the step: "On day 2, Mara keeps ..."."""
    match = re.search(r"On day (\d+), ", call.prompt)
    if "Summary so far:" not in call.prompt:
        return GOOD["memory"]
    day = int(match.group(1)) + 1 if match else 2
    return f"On day {day}, {GOOD['memory']}"


def stage_of(prompt: str) -> str:
    for stage, marker in STAGE_MARKERS.items():
        if marker in prompt:
            return stage
    for stage, marker in DOCUMENT_MARKERS.items():
        if marker in prompt:
            return stage
    raise AssertionError(f"the fake LM cannot tell the stage of this prompt: {prompt[:200]!r}")


@dataclass
class Call:
    stage: str
    prompt: str
    max_new_tokens: int
    state: object = None
    penalties: object = None  # the models.sampling.PenaltyParams the engine sent


class FakeBackend:
    """Enough of a backend for the manuscript-state strategy: the state is the list of words read."""

    name = "fake"
    fingerprint = "fake-1"
    supports_state = True
    context_window = 4096
    eos_token_ids: list[int] = []

    def __init__(self, fixed_size_state: bool):
        self.fixed_size_state = fixed_size_state
        self.tokens_read = 0

    def encode(self, text: str) -> list[str]:
        return re.findall(r"\S+", text)

    def prefill(self, state, ids) -> None:
        state["read"].extend(ids)
        self.tokens_read += len(ids)

    def new_state(self):
        return {"read": []}

    def clone_state(self, state):
        return {"read": list(state["read"])}

    def state_to_bytes(self, state, dtype="fp32") -> bytes:
        return "\x1f".join(state["read"]).encode("utf-8")

    def state_from_bytes(self, data: bytes):
        text = data.decode("utf-8")
        return {"read": text.split("\x1f") if text else []}

    def state_nbytes(self, state) -> int:
        return len(self.state_to_bytes(state))


class ScoringBackend(FakeBackend):
    """The fake backend plus a hand-made scorer: a passage is likelier the more of the question's words it holds."""

    def __init__(self):
        super().__init__(fixed_size_state=False)
        self.scored: list[tuple[list[str], list[str]]] = []

    def continuation_log_likelihood(self, prefix_ids, continuation_ids) -> float:
        self.scored.append((list(prefix_ids), list(continuation_ids)))
        words = {w.strip(".?").lower() for w in continuation_ids}
        return float(sum(w.strip(".?").lower() in words for w in prefix_ids)) - 100.0


class ScriptedGenerator:
    """A TextGenerator look-alike. `script[stage]` is a list of answers used in order (the last one repeats);
    an answer is a string, an exception instance (raised after half the words are streamed), or a callable
    taking the Call and returning a string. One word (with its leading space) is one token.

    A prompt that extends an earlier paragraph or opening prompt (the engine asking to continue a short paragraph)
    is the stage "continuation"; by default the model has nothing to add (it ends at once)."""

    name = "scripted"

    def __init__(self, script: dict | None = None, *, stateful: bool = False, context_window: int = 4096):
        defaults = {**{k: [v] for k, v in GOOD.items()}, "memory": [moving_memory], "continuation": [""]}
        self.script = {stage: list(answers) for stage, answers in {**defaults, **(script or {})}.items()}
        self.calls: list[Call] = []
        self.cancel_after_pieces: int | None = None  # set the cancel event after this many pieces of a paragraph
        self.backend = FakeBackend(fixed_size_state=stateful)
        self.supports_state = stateful
        self.context_window = context_window

    def count_tokens(self, text: str) -> int:
        return len(re.findall(r"\S+", text))

    def render_chat(self, messages) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"

    def calls_for(self, stage: str) -> list[Call]:
        return [c for c in self.calls if c.stage == stage]

    @property
    def tokens_read(self) -> int:
        return self.backend.tokens_read

    def stream(self, prompt, *, sampling=None, penalties=None, max_new_tokens=256, stop=(), cancel=None,
               penalty_history="", state=None, info=None):
        assert isinstance(prompt, str), "the engine sends rendered prompt text"
        stage = stage_of(prompt)
        if stage in ("paragraph", "opening") and any(
                c.stage in ("paragraph", "opening") and len(prompt) > len(c.prompt) and prompt.startswith(c.prompt)
                for c in self.calls):
            stage = "continuation"
        call = Call(stage, prompt, max_new_tokens, None if state is None else list(state["read"]), penalties)
        self.calls.append(call)
        answers = self.script[stage]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(call)
        failure = answer if isinstance(answer, BaseException) else None
        text = "the model was about to fail " * 5 if failure is not None else answer
        pieces = re.findall(r"\s*\S+", text)[:max_new_tokens]
        for index, piece in enumerate(pieces):
            if cancel is not None and cancel.is_set():
                raise Cancelled("stopped")
            if failure is not None and index == len(pieces) // 2:
                raise failure
            yield piece
            if stage in ("paragraph", "opening", "rewrite") and self.cancel_after_pieces == index + 1 \
                    and cancel is not None:
                cancel.set()
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped")



PREMISE = ("A lighthouse keeper on a remote island finds a message in a bottle addressed to her, "
           "written in her own handwriting.")


def run(events) -> tuple[list, object]:
    """Drain an engine generator: (events, its return value)."""
    collected = []
    while True:
        try:
            collected.append(next(events))
        except StopIteration as stop:
            return collected, stop.value


def db_state(session_factory, novel_id: int) -> dict:
    """Everything a step can touch, as plain values, to compare before and after."""
    from memory import revisions, store

    with session_factory() as session, session.begin():
        history = revisions.revisions(session, novel_id, include_dropped=True)
        return {
            "paragraphs": [(p.position, p.text, p.version) for p in store.paragraphs(session, novel_id)],
            "memory": [(m.version, m.text) for m in store.memory_history(session, novel_id)],
            "plans": [(p.position, list(p.plans), p.chosen_index, p.used_text, p.paragraph_id)
                      for p in store.plan_sets(session, novel_id)],
            "revisions": [(r.seq, r.kind, r.state) for r in history],
            "settings": dict(store.get_novel(session, novel_id).settings or {}),
            "title": store.get_novel(session, novel_id).title,
        }
