import errno
import multiprocessing
import os

import pytest

from posterior_jpeg.atomic import (
    FolderBusyError,
    FolderLock,
    append_line,
    read_lines,
    remove_stale_temporaries,
    write_atomically,
)


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


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path, dead_pid):
    dead = tmp_path / f".x_s1.png.{dead_pid()}.tmp"
    live = tmp_path / f".x_s2.png.{os.getpid()}.tmp"
    other = tmp_path / ".hidden.tmp"  # not a name write_atomically makes: left alone
    for path in (dead, live, other):
        path.write_bytes(b"half a file")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_a_short_append_on_a_full_disk_leaves_no_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "manifest.jsonl"
    append_line(path, '{"n": 1}')
    real_write = os.write

    def full_disk(descriptor, data):  # as write(2) does when the disk fills: part of it, then a short count
        return real_write(descriptor, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as error:
        append_line(path, '{"n": 2, "padding": "' + "x" * 100 + '"}')
    assert error.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_text() == '{"n": 1}\n'  # cut back: the next line does not glue onto half a record
    append_line(path, '{"n": 3}')
    assert path.read_text().splitlines() == ['{"n": 1}', '{"n": 3}']


def test_read_lines_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "manifest.jsonl"
    assert read_lines(path) == ([], 0)
    torn = b'{"n": 3, "outp'  # its writer was killed half-way
    path.write_bytes(b'{"n": 1}\n{"n": 2}\n' + torn)
    assert read_lines(path) == (['{"n": 1}', '{"n": 2}'], len(torn))
    append_line(path, '{"n": 4}')
    assert path.read_text().splitlines() == ['{"n": 1}', '{"n": 2}', '{"n": 4}']


def test_folder_lock_refuses_a_second_writer_and_is_freed_when_its_holder_dies(tmp_path, hold_lock):
    holder = hold_lock(tmp_path)
    with pytest.raises(FolderBusyError, match=f"{tmp_path}: another run \\(pid {holder.pid}\\)"):
        with FolderLock(tmp_path):
            pass
    holder.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
    holder.wait()
    assert (tmp_path / FolderLock.NAME).read_text() == f"{holder.pid}\n"
    with FolderLock(tmp_path):  # a dead process's lock is taken over
        assert (tmp_path / FolderLock.NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}"):  # and held against everyone else
            with FolderLock(tmp_path):
                pass
    assert list(tmp_path.iterdir()) == []  # released: no lock file left
