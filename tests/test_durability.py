"""What survives restarts, crashes, corruption and a second process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from semcache import CacheLockedError, Reason, SemanticCache
from tests.conftest import CountingEmbedder, WordHashEmbedder
from tests.test_lifecycle import assert_consistent

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        **kwargs,  # type: ignore[arg-type]
    )


def test_reopening_in_a_new_process_serves_the_same_hits(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    writer = run_python(
        """
        import sys
        from semcache import SemanticCache
        with SemanticCache(sys.argv[1]) as cache:
            cache.put("What is the capital of France?", "Paris.", namespace="t1")
            cache.put("How many legs does a spider have?", "Eight.", namespace="t1")
        """,
        str(tmp_path),
    )
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    with SemanticCache(tmp_path, embedder=embedder) as cache:
        assert cache.stats()["index_rebuilds"] == 0  # the snapshot written on close was used
        hit = cache.get("What's the capital city of France?", namespace="t1")
        assert hit is not None and hit.response == "Paris."
        hit = cache.get("how many legs do spiders have", namespace="t1")
        assert hit is not None and hit.response == "Eight."
        assert cache.get("What's the capital city of France?", namespace="t2") is None


def test_sigkill_while_writing_loses_no_returned_put(tmp_path: Path) -> None:
    acknowledged: dict[int, int] = {}
    with run_python(
        """
        import sys
        from tests.conftest import WordHashEmbedder
        from semcache import SemanticCache
        cache = SemanticCache(sys.argv[1], embedder=WordHashEmbedder())
        i = 0
        while True:
            entry_id = cache.put(f"question {i} about item {i * 7}", {"answer": i})
            print(i, entry_id, flush=True)
            i += 1
        """,
        str(tmp_path),
    ) as writer:
        assert writer.stdout is not None and writer.stderr is not None
        deadline = time.monotonic() + 60
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            i, entry_id = map(int, line.split())
            acknowledged[i] = entry_id
        os.kill(writer.pid, signal.SIGKILL)  # mid-write: the writer never stops on its own
        writer.wait(timeout=10)
        assert len(acknowledged) >= 300, writer.stderr.read()

    # The killed process left a stale snapshot (or none): the index is rebuilt from the store.
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        assert len(cache) >= len(acknowledged)
        for i, entry_id in acknowledged.items():
            entry = cache.entry(entry_id)
            assert entry is not None and entry.response == {"answer": i}
        hit = cache.get("question 150 about item 1050")
        assert hit is not None and hit.response == {"answer": 150}
        assert_consistent(cache)


def test_a_second_process_is_refused_while_the_first_has_the_directory(tmp_path: Path) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        cache.put("one two", 1)
        other = run_python(
            """
            import sys
            from tests.conftest import WordHashEmbedder
            from semcache import SemanticCache, CacheLockedError
            try:
                SemanticCache(sys.argv[1], embedder=WordHashEmbedder())
            except CacheLockedError as exc:
                print("refused:", exc)
            """,
            str(tmp_path),
        )
        out, err = other.communicate(timeout=60)
        assert "refused:" in out and "another process" in out, err
        with pytest.raises(CacheLockedError):
            SemanticCache(tmp_path, embedder=WordHashEmbedder())
        assert cache.get("one two") is not None
    # Released on close: the directory opens again.
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        assert cache.get("one two") is not None


def kill_after(directory: Path, setup: str) -> None:
    """Run ``setup`` on a cache in ``directory`` in a child process, then SIGKILL it."""
    code = (
        "import sys, time\n"
        "from tests.conftest import WordHashEmbedder\n"
        "from semcache import SemanticCache\n"
        "cache = SemanticCache(sys.argv[1], embedder=WordHashEmbedder())\n"
        f"{setup}\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    with run_python(code, str(directory)) as owner:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        owner.kill()
        owner.wait(timeout=10)


def test_a_killed_owner_does_not_leave_the_directory_locked(tmp_path: Path) -> None:
    kill_after(tmp_path, 'cache.put("alpha", 1)')
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        assert cache.get("alpha") is not None


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "delete"])
def test_a_damaged_snapshot_is_rebuilt_from_the_store(tmp_path: Path, damage: str) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        cache.put_many([f"fact {i} about owls" for i in range(50)], list(range(50)))
    snapshot = tmp_path / "index.snapshot"
    data = snapshot.read_bytes()
    if damage == "truncate":
        snapshot.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        snapshot.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "garbage":
        snapshot.write_bytes(b"not a snapshot")
    else:
        snapshot.unlink()
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        assert cache.stats()["index_rebuilds"] == 1
        assert len(cache) == 50
        hit = cache.get("fact 17 about owls")
        assert hit is not None and hit.response == 17
        assert_consistent(cache)


def test_a_rebuilt_index_is_saved_in_the_background_before_any_close(tmp_path: Path) -> None:
    """The open that rebuilt serves at once and saves the snapshot behind it: a process that
    then dies without closing leaves a snapshot the next open uses."""
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), exact_index_max=40) as cache:
        cache.put_many([f"fact {i} about owls" for i in range(120)], list(range(120)))
    (tmp_path / "index.snapshot").unlink()
    code = """
        import os, sys, time
        from semcache import SemanticCache
        from tests.conftest import WordHashEmbedder
        cache = SemanticCache(sys.argv[1], embedder=WordHashEmbedder(), exact_index_max=40)
        assert cache.stats()["index_rebuilds"] == 1
        snapshot = os.path.join(sys.argv[1], "index.snapshot")
        deadline = time.monotonic() + 60
        while not os.path.exists(snapshot) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(cache.stats()["indexes"], flush=True)
        os._exit(0)  # no close(): as if killed
    """
    process = run_python(code, str(tmp_path))
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.strip() == "{'ivf': 1}"  # saved once the retrained index was swapped in
    with SemanticCache(tmp_path, embedder=WordHashEmbedder(), exact_index_max=40) as cache:
        assert cache.stats()["index_rebuilds"] == 0
        assert cache.stats()["indexes"] == {"ivf": 1}
        hit = cache.get("fact 17 about owls")
        assert hit is not None and hit.response == 17
        assert_consistent(cache)


def test_a_corrupt_entry_is_removed_and_the_rest_served(tmp_path: Path) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        bad = cache.put("the broken one", "x")
        cache.put("the good one", "y")
        cache._store._cache.set(bad, b"SCE1\xff\xff\xff\x00garbage")  # damage one record
        decision = cache.get("the broken one")
        assert decision is None
        assert cache.stats()["corrupt_entries_removed"] == 1
        assert cache.get("the good one") is not None
        assert_consistent(cache)
        cache._store._cache.set(cache.put("another", "z"), b"junk")
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        # Damaged behind the cache's back after its snapshot: found and removed on first use.
        assert cache.get("another") is None
        assert cache.get("the good one") is not None
        assert_consistent(cache)


def test_a_new_model_re_embeds_stored_entries(tmp_path: Path, embedder: CountingEmbedder) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        cache.put("What is the capital of France?", "Paris.")
    with SemanticCache(tmp_path, embedder=embedder) as cache:
        assert embedder.calls == [1]
        hit = cache.get("What's the capital city of France?")
        assert hit is not None and hit.reason is Reason.SEMANTIC
    with SemanticCache(tmp_path, embedder=embedder) as cache:
        assert cache.stats()["index_rebuilds"] == 0
        assert embedder.calls == [1, 1]


def test_checkpoint_saves_only_when_something_changed(tmp_path: Path) -> None:
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        assert cache.checkpoint() is False  # nothing stored yet
        cache.put("alpha beta", 1)
        assert cache.checkpoint() is True
        assert cache.checkpoint() is False
        cache.put("gamma delta", 2)
        assert cache.checkpoint() is True


def test_a_checkpoint_spares_the_rebuild_after_a_kill(tmp_path: Path) -> None:
    kill_after(
        tmp_path,
        'cache.put_many([f"fact {i}" for i in range(20)], list(range(20)))\ncache.checkpoint()',
    )
    with SemanticCache(tmp_path, embedder=WordHashEmbedder()) as cache:
        assert cache.stats()["index_rebuilds"] == 0
        assert len(cache) == 20
