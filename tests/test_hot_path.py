"""Small pieces of the reserve hot path: generated reservation ids."""

from __future__ import annotations

import os
import re

from flashstock.engine import new_reservation_id


def test_generated_ids_are_random_hex_and_never_repeat() -> None:
    ids = [new_reservation_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_a_forked_process_never_hands_out_its_parents_ids() -> None:
    new_reservation_id()  # the parent has ids in stock
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, "".join(new_reservation_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 100 * 32).decode()
    os.waitpid(pid, 0)
    ours = {new_reservation_id() for _ in range(300)}
    assert not {child[i : i + 32] for i in range(0, len(child), 32)} & ours
