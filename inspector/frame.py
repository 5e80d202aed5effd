"""The typed values that pass between pipeline stages: `Frame` in, `FrameFault` when a frame cannot be judged."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Reason(StrEnum):
    """Why a frame was rejected; every reject carries exactly one."""

    SCORE = "score"  # a ROI's score reached its threshold: the model saw a defect
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"  # a partial write: the JPEG/PNG end marker is missing
    UNREADABLE = "unreadable"  # the file could not be read (permissions, vanished, I/O error)
    DECODE_FAILED = "decode_failed"
    UNSUPPORTED_IMAGE = "unsupported_image"  # decodes, but not 8/16-bit gray or colour
    ROI_OUT_OF_BOUNDS = "roi_out_of_bounds"  # the frame is too small for a configured ROI
    INFERENCE_ERROR = "inference_error"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Frame:
    """One acquired frame: encoded bytes from a file, or an already decoded BGR/gray array from a camera."""

    frame_id: str
    source: str
    captured_at: float  # Unix time, seconds
    data: bytes | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    read_error: str | None = None  # set by a source that could not read the file; the frame is rejected


class FrameFault(Exception):
    """Raised by a stage when a frame cannot be judged; the pipeline turns it into a reject."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
