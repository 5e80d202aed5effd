"""A CPU latency QoS request held while the daemon runs: idle cores stay in states that wake within the limit.

With `model.spinning: off` onnxruntime's worker blocks between operators, so every operator of
every inference wakes it. A core that went into a deep idle state (or, in a VM, a vCPU that halted
to the hypervisor) takes tens to hundreds of microseconds to answer, and a paced line leaves the
cores idle between frames. The kernel keeps the request only while the file stays open, so a
daemon that crashes cannot leave the PC in low-latency mode.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

DEVICE = Path("/dev/cpu_dma_latency")
UDEV_RULE = "deploy/udev/60-inspector-cpu-latency.rules"


class CpuLatencyRequest:
    """Holds a request on /dev/cpu_dma_latency from `__enter__` to `__exit__`; `held_us` is what the kernel has (None when nothing)."""

    def __init__(
        self,
        latency_us: int | None,
        *,
        device: Path | None = None,
        log: structlog.typing.FilteringBoundLogger | None = None,
    ) -> None:
        if latency_us is not None and latency_us < 0:
            raise ValueError(f"latency_us must be >= 0 or None, got {latency_us}")
        self.latency_us = latency_us
        self.device = device or DEVICE
        self.log = log or structlog.get_logger("inspector.cpu_latency")
        self.held_us: int | None = None
        self._fd: int | None = None

    def __enter__(self) -> Self:
        if self.latency_us is None or self._fd is not None:
            return self
        try:
            fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._not_held(exc)
            return self
        try:
            # The kernel reads a 4-byte native integer as the value, anything longer as hex text.
            os.write(fd, struct.pack("=i", self.latency_us))
        except OSError as exc:
            os.close(fd)
            self._not_held(exc)
            return self
        self._fd, self.held_us = fd, self.latency_us
        self.log.info("cpu_latency_held", latency_us=self.latency_us, device=str(self.device))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self.held_us = None, None

    def _not_held(self, exc: OSError) -> None:
        if exc.errno in (errno.EACCES, errno.EPERM):
            hint = (f"let the daemon's user write {self.device}: install {UDEV_RULE} (deploy/install.sh does) and keep "
                    f"DeviceAllow={self.device} w in the unit; or set pipeline.cpu_latency_us: null")
        elif exc.errno == errno.ENOENT:
            hint = "this kernel or container has no CPU latency QoS device; set pipeline.cpu_latency_us: null"
        else:
            hint = "set pipeline.cpu_latency_us: null to run without the request"
        self.log.warning("cpu_latency_not_held", latency_us=self.latency_us, device=str(self.device),
                         error=exc.strerror or str(exc), hint=hint)
