"""Prompt templates: one file per generation stage in `prompts/`, loaded once, rendered by one function.

A template has `[system]`, `[user]` and `[answer]` sections (see prompts/README.md). Slots are `{{name}}`;
`{{#name}}...{{/name}}` is kept only when the slot is non-empty. Slot text is inserted literally in one pass, so a
paragraph that happens to contain `{{plan}}` stays as written. `render` also says which part of the text each slot
produced, which the context inspector turns into a token count per section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
STAGES = ("start", "opening", "paragraph", "memory", "plans", "choose", "chapter_summary", "synopsis",
          "chapter_outline", "continue_opening", "continue_paragraph", "rewrite")
# Stages written as plain documents the model continues (no chat template): the document strategy's paragraph
# prompts (NovelSettings.paragraph_prompt).
DOCUMENT_STAGES = frozenset({"continue_opening", "continue_paragraph"})
ROLES = ("system", "user", "answer")
INSTRUCTION = "instruction"  # the section name of a template's own words (never truncated)

_SECTION_LINE = re.compile(r"^\[(system|user|answer)\]\s*$")
_TOKEN = re.compile(r"\{\{([#/]?)([a-z_][a-z0-9_]*)\}\}")


class TemplateError(ValueError):
    """A template file that cannot be used, or a render call that does not fit it; one line saying which."""


@dataclass(frozen=True)
class _Node:
    kind: str  # "text", "slot" or "block"
    text: str = ""
    name: str = ""
    children: tuple["_Node", ...] = ()


@dataclass(frozen=True)
class Template:
    stage: str
    parts: dict[str, tuple[_Node, ...]]  # role -> parsed nodes
    slots: frozenset[str]


@dataclass
class Piece:
    """A run of rendered text and the section it belongs to (a slot name, or INSTRUCTION for the template's words)."""

    section: str
    text: str


@dataclass
class Rendered:
    stage: str
    messages: list[dict]  # chat messages: {"role": "system" | "user", "content": str}
    answer_prefix: str  # the start of the model's answer, appended after the chat template
    pieces: list[Piece] = field(default_factory=list)

    def section_text(self, section: str) -> str:
        return "".join(p.text for p in self.pieces if p.section == section)

    def prompt_text(self, generator) -> str:
        """The exact text the model continues: the chat template over the messages plus the answer's start, or,
        for a document stage, the messages as plain text with the answer starting on a new paragraph."""
        if self.stage in DOCUMENT_STAGES:
            return "\n\n".join(message["content"] for message in self.messages) + "\n\n" + self.answer_prefix
        return generator.render_chat(self.messages) + self.answer_prefix


def _parse_nodes(text: str, stage: str, stack: tuple[str, ...] = ()) -> tuple[tuple[_Node, ...], str]:
    """Parse `text` until the closing tag of stack[-1]; return (nodes, the rest after that tag)."""
    nodes: list[_Node] = []
    while True:
        match = _TOKEN.search(text)
        if match is None:
            if stack:
                raise TemplateError(f"prompts/{stage}.txt: block {{{{#{stack[-1]}}}}} is never closed")
            if text:
                nodes.append(_Node("text", text=text))
            return tuple(nodes), ""
        if match.start() > 0:
            nodes.append(_Node("text", text=text[:match.start()]))
        marker, name = match.group(1), match.group(2)
        rest = text[match.end():]
        if marker == "":
            nodes.append(_Node("slot", name=name))
            text = rest
        elif marker == "#":
            children, text = _parse_nodes(rest, stage, stack + (name,))
            nodes.append(_Node("block", name=name, children=children))
        else:
            if not stack or stack[-1] != name:
                raise TemplateError(f"prompts/{stage}.txt: {{{{/{name}}}}} closes a block that is not open")
            return tuple(nodes), rest


def _slot_names(nodes: tuple[_Node, ...]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if node.kind in ("slot", "block"):
            names.add(node.name)
        names |= _slot_names(node.children)
    return names


def parse_template(stage: str, source: str) -> Template:
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in source.splitlines():
        header = _SECTION_LINE.match(line)
        if header:
            current = header.group(1)
            if current in sections:
                raise TemplateError(f"prompts/{stage}.txt: section [{current}] appears twice")
            sections[current] = []
        elif current is None:
            if line.strip() and not line.startswith("#"):
                raise TemplateError(f"prompts/{stage}.txt: text before the first [system]/[user] section")
        else:
            sections[current].append(line)
    if "user" not in sections:
        raise TemplateError(f"prompts/{stage}.txt: no [user] section")
    parts = {}
    for role, lines in sections.items():
        body = "\n".join(lines).strip("\n") if role != "answer" else "\n".join(lines).rstrip("\n")
        parts[role], _ = _parse_nodes(body, stage)
    slots = set()
    for nodes in parts.values():
        slots |= _slot_names(nodes)
    return Template(stage=stage, parts=parts, slots=frozenset(slots))


def _render_nodes(nodes: tuple[_Node, ...], values: dict[str, str], section: str, out: list[Piece]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(Piece(section, node.text))
        elif node.kind == "slot":
            out.append(Piece(node.name if section == INSTRUCTION else section, values[node.name]))
        elif values[node.name].strip():
            # A block's heading counts towards its slot's section: dropping the slot drops the heading too.
            _render_nodes(node.children, values, node.name, out)


class PromptLibrary:
    """All stage templates of one prompts folder, parsed once."""

    def __init__(self, prompts_dir: str | Path = PROMPTS_DIR, stages: tuple[str, ...] = STAGES):
        self.prompts_dir = Path(prompts_dir)
        self.templates: dict[str, Template] = {}
        for stage in stages:
            path = self.prompts_dir / f"{stage}.txt"
            if not path.is_file():
                raise TemplateError(f"Missing prompt template {path}: every stage needs its own file.")
            self.templates[stage] = parse_template(stage, path.read_text(encoding="utf-8"))

    def slots(self, stage: str) -> frozenset[str]:
        return self.templates[stage].slots

    def render(self, stage: str, **slots: object) -> Rendered:
        """Fill `stage`'s template. Every slot the template names must be given (empty string to leave it out)."""
        template = self.templates.get(stage)
        if template is None:
            raise TemplateError(f"No prompt template for stage {stage!r}.")
        missing = template.slots - slots.keys()
        if missing:
            raise TemplateError(f"prompts/{stage}.txt needs slot(s) {', '.join(sorted(missing))}.")
        unknown = slots.keys() - template.slots
        if unknown:
            raise TemplateError(f"prompts/{stage}.txt has no slot(s) {', '.join(sorted(unknown))}.")
        values = {name: "" if value is None else str(value).strip() for name, value in slots.items()}
        messages: list[dict] = []
        pieces: list[Piece] = []
        answer = ""
        for role in ROLES:
            nodes = template.parts.get(role)
            if nodes is None:
                continue
            role_pieces: list[Piece] = []
            _render_nodes(nodes, values, INSTRUCTION, role_pieces)
            content = "".join(p.text for p in role_pieces)
            if role == "answer":
                answer = content
            elif content.strip():
                messages.append({"role": role, "content": content.strip()})
            pieces.extend(role_pieces)
        return Rendered(stage=stage, messages=messages, answer_prefix=answer, pieces=pieces)
