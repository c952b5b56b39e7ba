"""A few hundred mutants of every reader that faces files from elsewhere (tests/benchmarks/fuzz_readers.py).

Each mutant (byte flips, truncations, splices, length-field and JSON value edits of a valid seed file
written by the real writers) must be read or refused with a one-line SlimedgeError naming the file:
no other exception, no hang, nothing left beside the input. In-process here (a child per reader in the
benchmark, which also survives a crash of the interpreter and runs thousands).
"""

from __future__ import annotations

import pytest

from tests.benchmarks.fuzz_readers import READERS, fuzz

N = 250


@pytest.mark.parametrize("reader", list(READERS))
def test_mutants_are_read_or_refused_cleanly(reader):
    counts, classes = fuzz(reader, N, seed=21)
    assert not classes, classes
    assert counts["clean"] + counts["accepted"] == N and counts["clean"] > N // 4, counts
