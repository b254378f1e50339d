"""Demo premises (data/premises/*.json): loading them with clear errors, and turning one into a new novel.

A premise file holds `premise`, optional `id`, `genre`, `style_notes`, `lore` (story-bible entries) and `needle`
(a fact to plant and a paraphrased question, used by the quality benchmark's retrieval check).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from memory import store
from memory.embeddings import Vector

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "premises"


class PremiseError(ValueError):
    """A premise file that cannot be used; one line saying which file and what is wrong."""


@dataclass
class Premise:
    id: str
    premise: str
    genre: str = ""
    style_notes: str = ""
    lore: list[dict] = field(default_factory=list)
    needle: dict | None = None

    @property
    def style(self) -> str:
        """Genre and style notes as one text (the store keeps style notes only)."""
        parts = [f"Genre: {self.genre}." if self.genre else "", self.style_notes]
        return " ".join(p for p in parts if p)


def demo_premise_paths() -> list[Path]:
    return sorted(DATA_DIR.glob("*.json"))


def load_premise(path: str | Path) -> Premise:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PremiseError(f"No premise file at {path}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PremiseError(f"{path} is not a UTF-8 JSON premise file ({exc}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("premise"), str) or not data["premise"].strip():
        raise PremiseError(f"{path} needs a non-empty \"premise\" text.")
    lore = data.get("lore") or []
    if not isinstance(lore, list) or not all(isinstance(e, dict) and e.get("name") and e.get("body") for e in lore):
        raise PremiseError(f"{path}: \"lore\" must be a list of entries with a name and a body.")
    needle = data.get("needle")
    if needle is not None and not (isinstance(needle, dict) and needle.get("fact") and needle.get("question")):
        raise PremiseError(f"{path}: \"needle\" needs a \"fact\" and a \"question\".")
    return Premise(id=str(data.get("id") or path.stem), premise=data["premise"].strip(),
                   genre=str(data.get("genre") or ""), style_notes=str(data.get("style_notes") or ""),
                   lore=lore, needle=needle)


def create_novel(session_factory, embedder, premise: Premise, *, title: str | None = None,
                 settings: dict | None = None) -> int:
    """A new novel from `premise` with its lore entries (embedded), in one transaction; returns its id. The title
    is derived from the premise (the start stage may then replace it with the model's proposal)."""
    vectors = embedder.embed([f"{e['name']}: {e['body']}" for e in premise.lore]) if premise.lore else []
    with session_factory() as session, session.begin():
        novel = store.create_novel(session, title or premise.premise.split("\n")[0][:60].strip(),
                                   premise=premise.premise, style_notes=premise.style, settings=settings or {})
        for entry, vector in zip(premise.lore, vectors):
            store.add_lore(session, novel.id, entry["name"], list(entry.get("keys") or []), entry["body"],
                           always_on=bool(entry.get("always_on")), embedding=Vector(embedder.name, vector))
        return novel.id
