"""corrald's cache of the code dataclasses generate: same classes, compiled once."""

from __future__ import annotations

import marshal
import subprocess
import sys
from pathlib import Path
from typing import Any

from corral.api import _dataclass_cache as cache

_SOURCE = "def __create_fn__(x):\n def f(self, y=1):\n  return (x, y)\n return f"


def test_a_text_is_compiled_once_and_runs_as_exec_would() -> None:
    caching = cache.CachingExec({})
    ns: dict[str, Any] = {}
    caching(_SOURCE, {}, ns)
    caching(_SOURCE, {}, ns)
    assert caching.new == 1
    assert list(caching.known) == [_SOURCE]
    assert ns["__create_fn__"](7)(None) == (7, 1)
    assert ns["__create_fn__"].__code__.co_filename == "<string>"
    caching(compile("z = 3", "<x>", "exec"), {}, ns)  # code objects pass through untouched
    assert ns["z"] == 3
    assert caching.new == 1


def test_texts_no_longer_used_are_dropped_once_they_pile_up(monkeypatch: Any) -> None:
    stale = {f"x{i} = {i}": compile(f"x{i} = {i}", "<string>", "exec") for i in range(5)}
    caching = cache.CachingExec(dict(stale))
    caching(_SOURCE, {}, {})
    assert len(caching.keep()) == 6  # under the bound: everything stays
    monkeypatch.setattr(cache, "MAX_ENTRIES", 3)
    assert list(caching.keep()) == [_SOURCE]


def test_the_file_round_trips_and_a_foreign_or_broken_one_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "__pycache__" / "dataclasses.bin"
    caching = cache.CachingExec({})
    caching(_SOURCE, {}, {})
    assert cache.write(path, caching.known)
    again = cache.read(path)
    assert list(again) == [_SOURCE]
    assert again[_SOURCE].co_code == caching.known[_SOURCE].co_code

    path.write_bytes(b"\0\0\r\n" + marshal.dumps(caching.known))  # another interpreter's magic
    assert cache.read(path) == {}
    path.write_bytes(path.read_bytes()[:4] + b"\xff")
    assert cache.read(path) == {}
    assert cache.read(tmp_path / "missing") == {}


def test_dataclasses_behave_the_same_with_the_cache_installed(tmp_path: Path) -> None:
    # In a child: install() patches the dataclasses module of the process it runs in.
    program = """
import dataclasses, sys
from corral.api import _dataclass_cache
assert isinstance(dataclasses.exec, _dataclass_cache.CachingExec)

@dataclasses.dataclass(frozen=True, order=True)
class P:
    x: int
    y: list = dataclasses.field(default_factory=list)

@dataclasses.dataclass(eq=False, repr=False)
class Q:
    a: str = "a"

p = P(1)
assert p == P(1, []) and p < P(2) and repr(p) == "P(x=1, y=[])"
try:
    p.x = 2
except dataclasses.FrozenInstanceError:
    pass
else:
    raise AssertionError("frozen")
assert Q().a == "a" and Q() != Q()
print(dataclasses.exec.new)
"""
    first = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert int(first.stdout) > 0


def test_the_daemon_installs_it_before_any_dataclass_is_made() -> None:
    program = (
        "import dataclasses, corral.api.daemon\n"
        "from corral.api import _dataclass_cache\n"
        "import corral.plugins.core\n"
        "print(type(dataclasses.exec).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "CachingExec"


def _codes(*texts: str) -> dict[str, Any]:
    return {t: compile(t, "<string>", "exec") for t in texts}


def test_the_texts_a_start_did_not_use_are_read_only_once_one_of_them_is_needed() -> None:
    code = _codes("a = 1", "b = 2")
    reads: list[int] = []

    def later() -> dict[str, bytes]:
        reads.append(1)
        return {"b = 2": marshal.dumps(code["b = 2"])}

    caching = cache.CachingExec({"a = 1": code["a = 1"]}, later)
    ns: dict[str, Any] = {}
    caching("a = 1", {}, ns)
    assert reads == [] and not caching.outdated()
    caching("b = 2", {}, ns)
    caching("b = 2", {}, ns)
    assert reads == [1] and caching.new == 0 and ns == {"a": 1, "b": 2}
    assert caching.outdated()  # the start needed the other file: its texts belong in the start's


def test_a_start_file_mostly_unused_is_outdated() -> None:
    caching = cache.CachingExec(_codes("a = 1", "b = 2", "c = 3"), dict)
    caching("a = 1", {}, {})
    assert caching.outdated()  # two of three unused
    caching("b = 2", {}, {})
    assert not caching.outdated()


def test_save_puts_what_the_start_used_in_its_file_and_the_rest_in_the_other(
    tmp_path: Path, monkeypatch: Any
) -> None:
    start, later = tmp_path / "start.bin", tmp_path / "later.bin"
    code = _codes("a = 1", "b = 2", "c = 3")
    assert cache.write(later, {"c = 3": marshal.dumps(code["c = 3"])})
    known = {"a = 1": code["a = 1"], "b = 2": code["b = 2"]}
    caching = cache.CachingExec(known, lambda: cache.read_blobs(later))
    monkeypatch.setattr(cache, "cache_path", lambda: start)
    monkeypatch.setattr(cache, "later_path", lambda: later)
    monkeypatch.setattr(cache, "_installed", caching)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    caching("c = 3", {}, {})
    caching("a = 1", {}, {})
    assert cache.save()
    assert sorted(cache.read(start)) == ["a = 1", "c = 3"]
    assert sorted(cache.read_blobs(later)) == ["b = 2"]
    assert cache.read(start)["c = 3"].co_code == code["c = 3"].co_code
    assert not caching.outdated() and not cache.save()  # nothing changed since


def test_what_is_compiled_after_the_start_is_kept_apart_from_the_start_s_texts(
    tmp_path: Path, monkeypatch: Any
) -> None:
    start, later = tmp_path / "start.bin", tmp_path / "later.bin"
    caching = cache.CachingExec({}, lambda: cache.read_blobs(later))
    monkeypatch.setattr(cache, "cache_path", lambda: start)
    monkeypatch.setattr(cache, "later_path", lambda: later)
    monkeypatch.setattr(cache, "_installed", caching)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    caching("a = 1", {}, {})
    assert cache.save()  # ready
    caching("b = 2", {}, {})  # a first call's class, after the start
    assert caching.outdated() and cache.save()  # stopping
    assert list(cache.read(start)) == ["a = 1"]
    assert list(cache.read_blobs(later)) == ["b = 2"]
    again = cache.CachingExec(cache.read(start), lambda: cache.read_blobs(later))
    again("a = 1", {}, {})
    again("b = 2", {}, {})
    assert again.new == 0
