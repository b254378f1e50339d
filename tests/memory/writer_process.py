"""A small writer process for the crash and concurrency tests: `python -m tests.memory.writer_process MODE URL ...`.

steps URL NOVEL_ID START: commit generation steps forever, printing "ack N" after each commit returns (the crash
test runs `steps` through a multiprocessing forkserver instead, so 50 trials do not pay 50 interpreter starts).
mixed URL NOVEL_ID SHARED_PARAGRAPH_ID COUNT TAG: COUNT steps on its own novel and COUNT edits of a paragraph shared
with another writer (re-reading the version after a conflict, as a user would), then "done".
"""

from __future__ import annotations

import sys

import numpy as np

from memory import store
from memory.errors import ConflictError
from memory.embeddings import Vector
from memory.db import make_sessionmaker, make_engine, run_in_transaction


def steps(url: str, novel_id: int, start: int, acks=None) -> None:
    """`acks`: a multiprocessing Connection to send acknowledgements on instead of stdout."""
    Session = make_sessionmaker(make_engine(url))
    rng = np.random.default_rng(start)
    i = start
    while True:
        text = f"paragraph {i} " + "word " * int(rng.integers(0, 8000))

        def work(s, i=i, text=text):
            store.commit_step(s, novel_id, text, f"memory {i}", [f"plan {i}a", f"plan {i}b", f"plan {i}c"], 0,
                              f"used {i}", Vector("e", rng.normal(size=64)))

        run_in_transaction(Session, work)
        if acks is not None:
            acks.send_bytes(f"ack {i}".encode())
        else:
            print(f"ack {i}", flush=True)
        i += 1


def mixed(url: str, novel_id: int, shared_id: int, count: int, tag: str) -> None:
    Session = make_sessionmaker(make_engine(url))
    for i in range(count):
        run_in_transaction(Session, lambda s: store.commit_step(
            s, novel_id, f"{tag} step {i}", f"{tag} memory {i}", ["a", "b", "c"], 0, "a", None))
        while True:
            try:
                def edit(s):
                    paragraph = store.get_paragraph(s, shared_id)
                    store.edit_paragraph(s, shared_id, f"{tag} edit {i}", paragraph.version)

                run_in_transaction(Session, edit)
                break
            except ConflictError:
                continue
    print("done", flush=True)


if __name__ == "__main__":
    mode, url, *rest = sys.argv[1:]
    if mode == "steps":
        steps(url, int(rest[0]), int(rest[1]))
    else:
        mixed(url, int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
