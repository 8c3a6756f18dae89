"""Chunk reassembly on disk, duplicates, bad chunks, resume after a restart."""

from __future__ import annotations

import os

import pytest

from agent.transfer import Transfer, to_ranges
from core.errors import TransferError
from core.protocol import Artifact, Manifest


def setup(tmp_path, size=10_000, chunk=1024):
    blob = os.urandom(size)
    m = Manifest(deployment_id="d1", device_id="pi-1", model=Artifact.of(blob, chunk))
    return blob, m


def chunk(blob, i, n=1024):
    return blob[i * n:(i + 1) * n]


def test_out_of_order_with_duplicates(tmp_path):
    blob, m = setup(tmp_path)
    tr = Transfer(tmp_path / "t", m)
    order = [9, 0, 5, 5, 1, 2, 3, 4, 6, 7, 8, 0]
    new = [tr.write("model", i, chunk(blob, i)) for i in order]
    assert new.count(False) == 2
    assert tr.complete and tr.missing() == {}
    assert tr.receivers["model"].sha256() == m.model.sha256
    tr.close()


def test_bad_chunks_are_refused(tmp_path):
    blob, m = setup(tmp_path)
    tr = Transfer(tmp_path / "t", m)
    with pytest.raises(TransferError, match="expected 1024"):
        tr.write("model", 0, b"x" * 10)
    with pytest.raises(TransferError, match="outside"):
        tr.write("model", 10, b"x")
    with pytest.raises(TransferError, match="no probes"):
        tr.write("probes", 0, b"x")
    tr.close()


def test_poisoned_chunk_is_dropped_and_asked_for_again(tmp_path):
    """A chunk of the right length but the wrong bytes never reaches the file."""
    blob, m = setup(tmp_path)
    tr = Transfer(tmp_path / "t", m)
    with pytest.raises(TransferError, match="does not match its sha256"):
        tr.write("model", 3, b"\0" * 1024)
    assert tr.receivers["model"].poisoned == 1 and tr.missing() == {"model": [(0, 10)]}
    for i in range(10):
        tr.write("model", i, chunk(blob, i))
    assert tr.complete and tr.receivers["model"].sha256() == m.model.sha256
    tr.close()


def test_resume_after_restart(tmp_path):
    blob, m = setup(tmp_path)
    tr = Transfer(tmp_path / "t", m)
    for i in (0, 1, 2, 7):
        tr.write("model", i, chunk(blob, i))
    tr.flush()
    del tr  # as after a kill: no close()
    again = Transfer(tmp_path / "t", m)
    assert again.resumed and again.resumed_chunks == 4
    assert again.missing() == {"model": [(3, 7), (8, 10)]}
    for i in (3, 4, 5, 6, 8, 9):
        again.write("model", i, chunk(blob, i))
    assert again.complete and again.receivers["model"].sha256() == m.model.sha256
    again.close()


def test_to_ranges():
    assert to_ranges([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]
    assert to_ranges([]) == []
