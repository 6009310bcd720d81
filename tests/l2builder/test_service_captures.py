"""`bookstream l2builder` on the three real captures: exact books, and a restart applies nothing twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.l2feeds import Books, Feed, capture_frames, reconstruct, wait_settled
from tests.conftest import RunService


@pytest.mark.parametrize("capture", ["2021-04-05.capture", "2021-04-17.capture", "2021-07-22.capture"])
def test_capture_books_equal_the_reconstruction_across_a_restart(
        capture: str, captures_dir: Path, run_service: RunService, service_env: dict[str, str],
        redis_url: str, mongo_url: str, key_prefix: str, mongo_database: str) -> None:
    frames = capture_frames(captures_dir / capture)
    expected, applied = reconstruct(frames)
    half = len(frames) // 2
    feed, books = Feed(redis_url, key_prefix), Books(mongo_url, mongo_database)
    env = {**service_env, "INSTANCE_NAME": "builder"}

    feed.frames(frames[:half])
    first = run_service("l2builder", env=env, name="first")
    wait_settled(feed, books)
    assert first.metric("bookstream_l2builder_frames_applied_total") == sum(applied[:half])
    assert first.terminate() == 0

    feed.frames(frames[half:])
    second = run_service("l2builder", env=env, name="second")
    wait_settled(feed, books)
    # The second process continues from the stored books: it applies exactly the second half, once.
    assert second.metric("bookstream_l2builder_frames_applied_total") == sum(applied[half:])
    assert second.metric("bookstream_l2builder_rows_applied_total") > 0
    documents = books.all()
    assert books.levels() == expected
    assert {doc["status"] for doc in documents.values()} == {"live"}
    assert {symbol: doc["seq"] for symbol, doc in documents.items()} == dict(feed.seq)
    later = {frame.symbol for frame in frames[half:]}
    assert {symbol: doc["epoch"] for symbol, doc in documents.items() if symbol in later} == dict.fromkeys(later, 2)
    assert "book_stale" not in first.logs() + second.logs()
