import multiprocessing
import os

import pytest

from posterior_jpeg.atomic import write_atomically


def test_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "stats.npz"
    write_atomically(path, b"first version, longer")
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_atomically(path, b"old")

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _write_many(path: str, payload: bytes, start) -> None:
    start.wait()  # both processes write during the same moment
    for _ in range(2000):
        write_atomically(path, payload)


def test_processes_writing_one_file_at_once_do_not_collide(tmp_path):
    """Two evaluation jobs filling one statistics cache: each rename must find its own temporary."""
    path = tmp_path / "cache.npz"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_write_many, args=(str(path), bytes([i]) * 2**16, start)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert path.read_bytes() in (bytes([0]) * 2**16, bytes([1]) * 2**16)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]
