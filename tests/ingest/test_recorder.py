"""`--record`: a capture of every received frame, byte for byte, optionally rotated by size or time."""

from __future__ import annotations

from pathlib import Path

from services.core.capture import iter_capture
from services.ingest.recorder import Recorder

FRAMES = [(1_700_000_000.0 + n * 0.25, f'{{"table":"orderBookL2","n":{n},"text":"é"}}') for n in range(40)]


def test_without_rotation_frames_are_appended_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ingest.capture"
    for part in (FRAMES[:10], FRAMES[10:]):
        recorder = Recorder(path)
        for recv_time, text in part:
            assert recorder.write(recv_time, text)
        recorder.close()
    assert list(iter_capture(path)) == FRAMES


def test_size_rotation_splits_into_replayable_files_that_together_hold_everything(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "ingest.capture", rotate_bytes=300)
    for recv_time, text in FRAMES:
        recorder.write(recv_time, text)
    recorder.close()
    files = sorted(tmp_path.glob("ingest.*.capture"))
    assert len(files) > 5
    assert all(path.stat().st_size <= 310 for path in files)
    assert [frame for path in files for frame in iter_capture(path)] == FRAMES


def test_time_rotation_starts_a_file_per_period_named_by_its_first_frame(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "rec.capture", rotate_seconds=2.0)
    for recv_time, text in FRAMES:
        recorder.write(recv_time, text)
    recorder.close()
    files = sorted(tmp_path.glob("rec.*.capture"))
    assert len(files) == 5  # 10 s of frames, 2 s per file
    assert files[0].name == "rec.20231114T221320.000000Z.capture"
    assert [len(list(iter_capture(path))) for path in files] == [8] * 5


def test_a_frame_the_format_cannot_hold_is_refused_not_written(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "x.capture")
    assert not recorder.write(1.0, "line\nbreak")
    assert recorder.write(2.0, "ok")
    recorder.close()
    assert list(iter_capture(tmp_path / "x.capture")) == [(2.0, "ok")]
