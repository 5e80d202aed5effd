"""The typed values that pass between pipeline stages: `Frame` in, `FrameFault` when a frame cannot be judged."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Reason(StrEnum):
    """Why a frame was not passed; every reject (and every uncertain verdict) carries exactly one."""

    SCORE = "score"  # a ROI's score reached its threshold: the model saw a defect
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"  # a partial write: the JPEG/PNG end marker is missing
    UNREADABLE = "unreadable"  # the file could not be read (permissions, vanished, I/O error)
    DECODE_FAILED = "decode_failed"
    UNSUPPORTED_IMAGE = "unsupported_image"  # decodes, but not 8/16-bit gray or colour, or not the model's bit depth (pixel_max)
    ROI_OUT_OF_BOUNDS = "roi_out_of_bounds"  # the frame is too small for a configured ROI
    FRAME_SIZE = "frame_size"  # the frame's width or height lies outside the sizes the model was trained on (frame_size)
    REFUSED = "refused"  # a symlink, or a path leading out of the watched folder
    INFERENCE_ERROR = "inference_error"
    INTERNAL_ERROR = "internal_error"
    OVERLOAD = "overload"  # inference was behind: the frame found the queue full and was not judged
    DEADLINE = "deadline"  # judged a pass, but after its deadline: the PLC must not wait for it
    UNCERTAIN = "uncertain"  # a score inside the calibration's uncertain band: verdict `uncertain`, routed per config


# The file itself is the problem: the folder source moves it to quarantine/ with a .reason file.
QUARANTINE_REASONS = frozenset(
    {
        Reason.EMPTY_FILE,
        Reason.NOT_AN_IMAGE,
        Reason.TRUNCATED,
        Reason.UNREADABLE,
        Reason.DECODE_FAILED,
        Reason.UNSUPPORTED_IMAGE,
        Reason.ROI_OUT_OF_BOUNDS,
        Reason.FRAME_SIZE,
        Reason.REFUSED,
    }
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One acquired frame: encoded bytes from a file, or an already decoded BGR/gray array from a camera."""

    frame_id: str
    source: str
    captured_at: float  # Unix time, seconds
    data: bytes | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    read_error: str | None = None  # set by a source that could not read the file; the frame is rejected
    fault: Reason | None = None  # why read_error was set, when it is not a plain read failure (e.g. REFUSED)
    part_id: str | None = None  # from the file name or a counter; MQTT correlation data
    # Waited on disk before the source started watching (a folder's files at start or after a restart): queued for
    # inference as room frees up, never rejected as `overload`; its capture time still makes a late pass a `deadline`.
    backlog: bool = False
    # The file this frame was read from: (inode, mtime ns, size) of the descriptor read, so that only that file moves
    # under its decision, after a crash too (the journal keeps it). None for a camera frame, or nothing read.
    file_identity: tuple[int, int, int] | None = None


class FrameFault(Exception):
    """Raised by a stage when a frame cannot be judged; the pipeline turns it into a reject."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
