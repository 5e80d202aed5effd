"""The camera source on real video files written with OpenCV: a file ends, a stream is reopened."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import structlog

from inspector.config import SourceSettings
from inspector.frame import Frame
from inspector.health import Health
from inspector.logs import configure_logging
from inspector.sources.camera import CameraSource, video_file
from tests.mqtt_helpers import wait_until


def _video(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for i in range(n):
        writer.write(np.full((64, 64, 3), 100 + i, np.uint8))
    writer.release()
    return path


def _collect(source: CameraSource, stop: threading.Event, out: list[Frame]) -> threading.Thread:
    def run() -> None:
        out.extend(f for f in source.frames(stop) if f is not None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_video_file_ends_once_its_frames_are_read(tmp_path: Path) -> None:
    logged = io.StringIO()
    configure_logging("info", "json", stream=logged)
    video = _video(tmp_path / "line.avi", 5)
    source = CameraSource(SourceSettings(kind="camera", uri=str(video)), health=Health(), log=structlog.get_logger("test"))
    frames: list[Frame] = []
    stop = threading.Event()
    thread = _collect(source, stop, frames)
    thread.join(10)
    stop.set()
    assert not thread.is_alive(), "the source ended by itself at the end of the file"
    assert [f.part_id for f in frames] == ["1", "2", "3", "4", "5"], "each frame once: no pass over the file counts twice"
    events = [json.loads(line) for line in logged.getvalue().splitlines()]
    ended = [e for e in events if e["event"] == "video_file_ended"]
    assert len(ended) == 1 and ended[0]["frames"] == 5 and ended[0]["loop"] is False
    assert not [e for e in events if e["event"] == "camera_stream_lost"]


def test_an_unpaced_video_file_waits_for_inference_and_a_paced_one_stands_in_for_a_line(tmp_path: Path) -> None:
    video = _video(tmp_path / "line.avi", 3)
    for fps, backlog in ((0, True), (200, False)):
        source = CameraSource(SourceSettings(kind="camera", uri=str(video), fps=fps), health=Health(), log=structlog.get_logger("test"))
        frames: list[Frame] = []
        _collect(source, threading.Event(), frames).join(10)
        # backlog: the daemon holds the frame until inference has room instead of rejecting it as `overload`.
        assert [f.backlog for f in frames] == [backlog] * 3, f"fps {fps}"


def test_a_video_file_set_to_loop_starts_again_and_part_ids_count_on(tmp_path: Path) -> None:
    video = _video(tmp_path / "line.avi", 4)
    source = CameraSource(SourceSettings(kind="camera", uri=f"file://{video}", loop_video=True), health=Health(),
                          log=structlog.get_logger("test"))
    frames: list[Frame] = []
    stop = threading.Event()
    thread = _collect(source, stop, frames)
    try:
        assert wait_until(lambda: len(frames) >= 10, 10)
    finally:
        stop.set()
        thread.join(5)
    assert [f.part_id for f in frames[:10]] == [str(i) for i in range(1, 11)]
    assert int(frames[4].image.mean()) == int(frames[0].image.mean()), "the fifth frame is the file's first again"


def test_what_counts_as_a_video_file(tmp_path: Path) -> None:
    video = _video(tmp_path / "line.avi", 1)
    (tmp_path / "link.avi").symlink_to(video)
    os.mkfifo(tmp_path / "pipe")
    assert video_file(str(video)) == video
    assert video_file(str(tmp_path / "link.avi")) == tmp_path / "link.avi"
    assert video_file(f"file://{video}") == video
    # Devices, streams and pipelines have no end: they are reopened when they stop delivering.
    for uri in ("0", "/dev/null", str(tmp_path / "pipe"), str(tmp_path), str(tmp_path / "missing.avi"), "rtsp://cam/stream",
                f"http://localhost{video}", f"filesrc location={video} ! decodebin ! appsink"):
        assert video_file(uri) is None, uri
