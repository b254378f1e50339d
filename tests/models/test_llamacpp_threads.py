"""The llama.cpp thread default (models/service.py): one thread per physical core the process may use."""

from __future__ import annotations

import os

from models.service import _llamacpp_threads, _physical_cores


def _cpuinfo(logical: int, threads_per_core: int) -> str:
    return "\n\n".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i // threads_per_core}\nsiblings\t: "
                       f"{logical}" for i in range(logical)) + "\n"


def test_hyperthreads_count_once_and_plain_cores_each():
    assert _physical_cores(_cpuinfo(8, 2)) == 4
    assert _physical_cores(_cpuinfo(2, 1)) == 2
    two_sockets = _cpuinfo(4, 1) + "\n" + _cpuinfo(4, 1).replace("physical id\t: 0", "physical id\t: 1")
    assert _physical_cores(two_sockets) == 8


def test_no_core_ids_falls_back_to_half_the_allowed_cpus():
    allowed = len(os.sched_getaffinity(0))
    assert _physical_cores("processor\t: 0\nmodel name\t: something\n") is None
    assert _llamacpp_threads("processor\t: 0\n") == max(1, allowed // 2)


def test_never_more_threads_than_cpus_the_process_may_use():
    allowed = len(os.sched_getaffinity(0))
    assert _llamacpp_threads(_cpuinfo(64, 2)) == min(32, allowed)
    assert _llamacpp_threads(_cpuinfo(1, 1)) == 1
