"""The camera source: OpenCV VideoCapture on a device index, V4L2 path, RTSP/HTTP URL, GStreamer pipeline or video file.

A lost stream is reopened with capped exponential backoff; a stream that delivers nothing for `stall_timeout_s` is
reported and reopened. A video file ends the source at its last frame (or starts again, with `loop_video`). The
capture timestamp is taken at grab, before the (slower) retrieve/decode.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import structlog

from inspector.config import SourceSettings, redact_uri, uri_path
from inspector.errors import InputError
from inspector.frame import Frame
from inspector.health import Health
from inspector.journal import Record

_BACKENDS = {"ffmpeg": cv2.CAP_FFMPEG, "gstreamer": cv2.CAP_GSTREAMER, "v4l2": cv2.CAP_V4L2}
_IDLE_TICK_S = 0.2


def video_file(uri: str) -> Path | None:
    """The file's path when `uri` names a regular file (a path or file:// URL); None for a device, stream or pipeline."""
    # A stream, even one that serves a file, is reopened when it ends; a pipeline reads whatever its elements read.
    path = uri_path(uri)
    if path is None:
        return None
    try:
        # Followed links: /dev/v4l/by-id/... links to a device, which is a character device, not a regular file.
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None  # not there (yet): opened and retried like any stream until it is
    return path if regular else None


class CameraSource:
    """Frames from a VideoCapture, reopened when the stream is lost or stalls."""

    def __init__(
        self,
        settings: SourceSettings,
        *,
        health: Health,
        log: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.uri is None:
            raise InputError("source.uri: required when source.kind is camera")
        self.settings = settings
        self.uri = settings.uri
        self.health = health
        self.log = log.bind(camera=redact_uri(self.uri))
        self._clock = clock
        self._count = 0
        self._last_frame = time.monotonic()
        self._stalled = False
        self.reconnects = 0

    def describe(self) -> dict[str, Any]:
        """The stream and its backend."""
        return {"kind": "camera", "uri": redact_uri(self.uri), "backend": self.settings.backend}

    def _open(self) -> cv2.VideoCapture:
        s = self.settings
        target: int | str = int(self.uri) if self.uri.isdigit() else self.uri
        api = _BACKENDS.get(s.backend, cv2.CAP_GSTREAMER if "!" in self.uri else cv2.CAP_ANY)
        params: list[int] = []
        if s.stall_timeout_s > 0 and api in (cv2.CAP_ANY, cv2.CAP_FFMPEG):
            # FFmpeg otherwise blocks in read() for as long as a dead RTSP peer keeps the socket open.
            ms = int(s.stall_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(target, api, params)

    def frames(self, stop: threading.Event) -> Iterator[Frame | None]:
        """Frames as the stream delivers them (paced to `fps` when set); None while waiting to reconnect."""
        ended = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(stop, ended), name="camera-watchdog", daemon=True)
        watchdog.start()
        try:
            yield from self._frames(stop)
        finally:
            ended.set()

    def _frames(self, stop: threading.Event) -> Iterator[Frame | None]:
        s = self.settings
        backoff = s.reconnect_min_s
        first = True
        looped = False
        while not stop.is_set():
            # Decided at each opening: a file path may name nothing yet, and be retried like a stream until it does.
            file = video_file(self.uri)
            cap = self._open()
            if not cap.isOpened():
                cap.release()
                self.health.set_flag("camera_disconnected", "cannot open the stream")
                self.log.warning("camera_open_failed", retry_in_s=round(backoff, 2))
                yield from _wait(stop, backoff)
                backoff = min(backoff * 2, s.reconnect_max_s)
                continue
            if not first and not looped:
                self.reconnects += 1
            first = looped = False
            self.health.clear_flag("camera_disconnected")
            self.log.info("camera_connected", reconnects=self.reconnects, backend=cap.getBackendName())
            self._last_frame = time.monotonic()
            before = self._count
            try:
                # An unpaced file is read as fast as it decodes: its frames wait for inference (as a folder's files
                # at start do) rather than most of them becoming `overload` rejects. Paced, it stands in for a line.
                yield from self._read(cap, stop, backlog=file is not None and not s.fps)
            finally:
                cap.release()
            if stop.is_set():
                break
            delivered = self._count - before
            if file is not None:
                # A file has an end; reopening it would count every part again, as if the line had made them twice.
                log = self.log.info if delivered else self.log.warning
                log("video_file_ended", file=str(file), frames=delivered, loop=s.loop_video)
                if not s.loop_video:
                    return
                if delivered:
                    looped, backoff = True, s.reconnect_min_s
                    continue
            self.health.set_flag("camera_disconnected", "stream ended or was lost")
            # A stream that delivered frames was healthy: start the backoff over; one that never did keeps growing it.
            backoff = s.reconnect_min_s if delivered else min(backoff * 2, s.reconnect_max_s)
            self.log.warning("camera_stream_lost", frames=delivered, retry_in_s=round(backoff, 2))
            yield from _wait(stop, backoff)

    def _read(self, cap: cv2.VideoCapture, stop: threading.Event, *, backlog: bool = False) -> Iterator[Frame | None]:
        period = 1.0 / self.settings.fps if self.settings.fps > 0 else 0.0
        next_at = time.monotonic()
        while not stop.is_set():
            if period:
                delay = next_at - time.monotonic()
                if delay > 0:
                    if delay > _IDLE_TICK_S:
                        yield None
                    time.sleep(min(delay, _IDLE_TICK_S))
                    continue
                next_at = max(next_at + period, time.monotonic() - period)
            if not cap.grab():
                return
            captured = self._clock()
            ok, image = cap.retrieve()
            if not ok or not isinstance(image, np.ndarray):
                self.log.warning("camera_retrieve_failed")
                return
            self._last_frame = time.monotonic()
            if self._stalled:
                self._stalled = False
                self.health.clear_flag("camera_stalled")
            self._count += 1
            yield Frame(frame_id=f"frame-{self._count}", source=redact_uri(self.uri), captured_at=captured, image=image,
                        part_id=str(self._count), backlog=backlog)

    def _watch(self, stop: threading.Event, ended: threading.Event) -> None:
        """Notice a stream that delivers nothing (the capture may block inside grab), until stopped or the source ends."""
        limit = self.settings.stall_timeout_s
        while limit > 0 and not stop.is_set() and not ended.wait(min(1.0, limit / 4)):
            silent = time.monotonic() - self._last_frame
            if silent > limit and not self._stalled:
                self._stalled = True
                self.health.set_flag("camera_stalled", f"no frame for {silent:.0f} s")
                self.log.error("camera_stalled", silent_s=round(silent, 1), limit_s=limit)

    def done(self, frame: Frame, record: Record) -> None:
        """Nothing to move for a camera frame."""

    def close(self) -> None:
        """The capture is released by frames() when it ends."""


def _wait(stop: threading.Event, seconds: float) -> Iterator[None]:
    """Sleep up to `seconds`, yielding idle ticks so the caller keeps beating."""
    end = time.monotonic() + seconds
    while not stop.is_set() and (left := end - time.monotonic()) > 0:
        stop.wait(min(left, _IDLE_TICK_S))
        yield None
