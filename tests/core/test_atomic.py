"""Atomic directory replacement (`derm_features.core.atomic`): a re-run's new pool, index,
daily outputs or training set takes the old one's place without a moment, or a crash
point, where the path names nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from derm_features.core import atomic
from derm_features.core.atomic import atomic_dir, clean_stale_tmp


def write_copy(path: Path, value: str) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "part").write_text(value)
        (tmp / "part.2").write_text(value)


def test_a_reader_always_finds_a_whole_copy_while_it_is_replaced(tmp_path):
    path = tmp_path / "ds=2024-06-02"
    write_copy(path, "0")
    seen, missing, stop = set(), [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add((path / "part").read_text())
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 300):
            write_copy(path, str(i))
    finally:
        stop.set()
        reader.join()
    assert not missing, f"the path named nothing {len(missing)} time(s)"
    assert len(seen) > 1  # the reader did run beside the replacements
    assert (path / "part").read_text() == (path / "part.2").read_text() == "299"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no .tmp-* left


def test_a_crash_right_after_the_swap_leaves_the_new_copy_and_a_stale_old_one(
    tmp_path, monkeypatch
):
    path = tmp_path / "pool"
    write_copy(path, "old")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while removing the old copy")

    monkeypatch.setattr(atomic.shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        write_copy(path, "new")
    monkeypatch.undo()
    assert (path / "part").read_text() == "new"
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert [(p / "part").read_text() for p in stale] == ["old"]
    clean_stale_tmp(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["pool"]


def test_without_an_atomic_swap_the_copy_is_still_replaced(tmp_path, monkeypatch):
    """Where renameat2 cannot swap (another OS, a filesystem without it), two renames."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    path = tmp_path / "pool"
    write_copy(path, "old")
    write_copy(path, "new")
    assert (path / "part").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["pool"]


def test_exchange_swaps_two_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not atomic._exchange(a, b):
        pytest.skip("renameat2 RENAME_EXCHANGE is not available here")
    assert (a / "x").exists() is False and (b / "x").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        atomic._exchange(tmp_path / "missing", b)


def test_a_replaced_symlink_is_unlinked_and_its_target_left_alone(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("theirs")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "pool").symlink_to(target)
    write_copy(runs / "pool", "new")
    assert not (runs / "pool").is_symlink() and (runs / "pool" / "part").read_text() == "new"
    assert [p.name for p in runs.iterdir()] == ["pool"]
    assert (target / "keep").read_text() == "theirs"
    # A crash's leftover link (`clean_stale_tmp` followed it into rmtree, which refused it).
    (runs / ".tmp-pool-0").symlink_to(target)
    clean_stale_tmp(runs)
    assert [p.name for p in runs.iterdir()] == ["pool"]
    assert (target / "keep").read_text() == "theirs"


@pytest.mark.parametrize("swap", [True, False])
def test_a_file_in_the_way_is_replaced_and_removed(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    (tmp_path / "pool").write_text("a file, not a copy")
    write_copy(tmp_path / "pool", "new")
    assert (tmp_path / "pool" / "part").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["pool"]
