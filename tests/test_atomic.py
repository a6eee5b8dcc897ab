import errno
import multiprocessing
import os

import pytest

from posterior_jpeg.atomic import Folder, FolderBusyError, FolderLock, write_atomically
from posterior_jpeg.errors import SymlinkError


def temporary(pid: int) -> str:
    """A temporary's name as `Folder.write` makes it (its random part fixed)."""
    return f".posterior-jpeg-{pid}-0123456789abcdef.tmp"


def test_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "stats.npz"
    write_atomically(path, b"first version, longer")
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_atomically(path, b"old")

    def fail(*args, **kwargs):
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


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_and_users_files_kept(tmp_path, dead_pid):
    pid = dead_pid()
    dead, live = temporary(pid), temporary(os.getpid())
    users = [".hidden.tmp", ".report.2024.tmp", f".a.b.{pid}.tmp", f".x_s0.png.{pid}.tmp",  # the old naming
             f".posterior-jpeg-{pid}-0123.tmp", f"{temporary(pid)}.bak", f"x{temporary(pid)}"]
    for name in (dead, live, *users):
        (tmp_path / name).write_bytes(b"half a file")
    (tmp_path / "victim").write_bytes(b"the user's")
    link = temporary(pid).replace("0123456789abcdef", "fedcba9876543210")
    (tmp_path / link).symlink_to("victim")  # not a file: kept
    with Folder(tmp_path) as folder:
        assert folder.remove_stale_temporaries() == [dead]
    assert dead not in {p.name for p in tmp_path.iterdir()}
    assert {live, link, *users} <= {p.name for p in tmp_path.iterdir()}
    assert (tmp_path / "victim").read_bytes() == b"the user's"


def test_a_short_append_on_a_full_disk_leaves_no_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "manifest.jsonl"
    folder = Folder(tmp_path)
    folder.append_line(path.name, '{"n": 1}')
    real_write = os.write

    def full_disk(descriptor, data):  # as write(2) does when the disk fills: part of it, then a short count
        return real_write(descriptor, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as error:
        folder.append_line(path.name, '{"n": 2, "padding": "' + "x" * 100 + '"}')
    assert error.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_text() == '{"n": 1}\n'  # cut back: the next line does not glue onto half a record
    folder.append_line(path.name, '{"n": 3}')
    assert path.read_text().splitlines() == ['{"n": 1}', '{"n": 3}']
    folder.close()


def test_read_lines_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "manifest.jsonl"
    folder = Folder(tmp_path)
    assert folder.read_lines(path.name) == ([], 0)
    torn = b'{"n": 3, "outp'  # its writer was killed half-way
    path.write_bytes(b'{"n": 1}\n{"n": 2}\n' + torn)
    assert folder.read_lines(path.name) == (['{"n": 1}', '{"n": 2}'], len(torn))
    folder.append_line(path.name, '{"n": 4}')
    folder.close()
    assert path.read_text().splitlines() == ['{"n": 1}', '{"n": 2}', '{"n": 4}']


def test_folder_lock_refuses_a_second_writer_and_is_freed_when_its_holder_dies(tmp_path, hold_lock):
    holder = hold_lock(tmp_path)
    folder = Folder(tmp_path)
    with pytest.raises(FolderBusyError, match=f"{tmp_path}: another run \\(pid {holder.pid}\\)"):
        with FolderLock(folder):
            pass
    holder.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
    holder.wait()
    assert (tmp_path / FolderLock.NAME).read_text() == f"{holder.pid}\n"
    with FolderLock(folder):  # a dead process's lock is taken over
        assert (tmp_path / FolderLock.NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}"):  # and held against everyone else
            with FolderLock(folder):
                pass
    assert list(tmp_path.iterdir()) == []  # released: no lock file left
    folder.close()


@pytest.fixture
def planted(tmp_path):
    """An output folder `out` (reached through a link the user made: allowed) and, outside it, a
    folder of the user's files `victims`."""
    victims, real = tmp_path / "victims", tmp_path / "real-out"
    victims.mkdir()
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    for name in ("f", "g"):
        (victims / name).write_bytes(b"the user's\n")
    return tmp_path / "out", victims


def test_links_planted_in_the_folder_are_refused_and_their_targets_untouched(planted):
    out, victims = planted
    for name, target in [("x_s0.png", "f"), ("manifest.jsonl", "g"), (FolderLock.NAME, "f"), ("thumbs", ".")]:
        (out / name).symlink_to(victims / target)
    (out / "dangling.png").symlink_to(victims / "new")
    os.link(victims / "g", out / "hard.jsonl")
    folder = Folder(out)
    for attempt in [lambda: folder.write("x_s0.png", b"PNG"), lambda: folder.write("dangling.png", b"PNG"),
                    lambda: folder.append_line("manifest.jsonl", "{}"), lambda: folder.read_lines("manifest.jsonl"),
                    lambda: folder.append_line("hard.jsonl", "{}"), lambda: FolderLock(folder).__enter__(),
                    lambda: folder.child("thumbs")]:
        with pytest.raises(SymlinkError, match="is a symbolic or hard link; this tool does not write through links"):
            attempt()
    folder.write("ok.png", b"PNG")  # the folder itself may be a link
    folder.close()
    assert sorted(p.name for p in victims.iterdir()) == ["f", "g"]
    assert all((victims / name).read_bytes() == b"the user's\n" for name in ("f", "g"))
    assert (out / "x_s0.png").is_symlink() and (out / "ok.png").read_bytes() == b"PNG"


def test_a_link_at_a_guessed_temporary_name_is_never_written_through(planted, monkeypatch):
    """Temporaries are created exclusively: even a link at the very name chosen stops the write."""
    out, victims = planted
    monkeypatch.setattr("posterior_jpeg.atomic.secrets.token_hex", lambda size: "0123456789abcdef")
    (out / temporary(os.getpid())).symlink_to(victims / "f")
    with pytest.raises(FileExistsError):
        write_atomically(out / "x_s0.png", b"PNG")
    assert (victims / "f").read_bytes() == b"the user's\n" and not (out / "x_s0.png").exists()


def test_temporary_names_are_short_and_differ_each_time(tmp_path, monkeypatch):
    """A name of 250 bytes still gets a temporary (the system's limit is 255), and no two alike."""
    made = []
    real_open = os.open

    def record(name, flags, *args, **kwargs):
        if flags & os.O_EXCL:
            made.append(name)
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", record)
    long = "x" * 246 + ".png"
    write_atomically(tmp_path / long, b"1")
    write_atomically(tmp_path / long, b"2")
    assert (tmp_path / long).read_bytes() == b"2"
    assert len(made) == 2 and made[0] != made[1] and all(len(name) < 64 for name in made)
