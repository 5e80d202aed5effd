"""Frame sources: one small interface, chosen in config by `source.kind`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

import structlog

from inspector.config import SourceKind, SourceSettings
from inspector.frame import Frame
from inspector.health import Health
from inspector.journal import Record


class FrameSource(Protocol):
    """Delivers frames in arrival order, and hears each frame's journaled decision."""

    def describe(self) -> dict[str, Any]:
        """What this source reads, for the `state` topic."""
        ...

    def frames(self, stop: threading.Event) -> Iterator[Frame | None]:
        """Frames as they arrive; None now and then while idle, so the caller can beat and check `stop`."""
        ...

    def done(self, frame: Frame, record: Record) -> None:
        """The frame's decision is in the journal: move, delete or quarantine what it came from."""
        ...

    def close(self) -> None:
        """Release the folder watch or the capture device."""
        ...


def build_source(
    settings: SourceSettings, *, health: Health, log: structlog.typing.FilteringBoundLogger, uncertain_route: str = "reject"
) -> FrameSource:
    """The source `settings.kind` names; a folder files uncertain parts under processed/<uncertain_route>/."""
    if settings.kind is SourceKind.FOLDER:
        from inspector.sources.folder import FolderSource

        return FolderSource(settings, health=health, log=log, uncertain_route=uncertain_route)
    from inspector.sources.camera import CameraSource

    return CameraSource(settings, health=health, log=log)
