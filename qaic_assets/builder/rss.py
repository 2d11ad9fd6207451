"""The peak RSS of a compiler call, without psutil.

``os.wait4`` reports the child's ``ru_maxrss``, but Linux carries the parent's high-water mark into a
child at fork/exec, so a small compiler started from a big step process would look big; see PeakRss.
"""

from __future__ import annotations

import sys

#: How often the child's own high-water mark (/proc/<pid>/status VmHWM) is sampled, and when first: not
#: at once, as right after exec the child's VmHWM is a few pages (a compiler that then ended before
#: the next sample was reported with a peak of ~0 MB).
_RSS_SAMPLE_S = 0.2
_FIRST_SAMPLE_S = 0.05


def _self_peak_rss() -> int:
    """This process's peak RSS in bytes (an upper bound of what a child inherits in ru_maxrss)."""
    try:
        import resource

        maxrss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return 0
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def _read_vmhwm(pid: int) -> int:
    """The process's own peak RSS (VmHWM) in bytes from /proc, 0 if unavailable (exited, non-Linux)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakRss:
    """Peak RSS of the child, corrected for what it inherits from us.

    Linux carries the parent's RSS high-water mark into the child's ``ru_maxrss`` at fork/exec, so a
    small compiler started from a 400 MB Dagster step process reports >= 400 MB from ``wait4``. Hence:
    if ``wait4``'s value exceeds our own peak at spawn time, the child got there by itself and the value
    is exact; otherwise the child's true peak is the highest VmHWM sampled from /proc while it ran
    (VmHWM starts afresh at exec), falling back to the ``wait4`` value (an upper bound) if the child
    exited before the first sample.
    """

    _MARGIN = 4 << 20

    def __init__(self) -> None:
        self.parent_peak = _self_peak_rss()
        self.sampled = 0
        self._next: float | None = None

    def sample(self, pid: int, now: float) -> None:
        if self._next is None:
            self._next = now + _FIRST_SAMPLE_S
        if now >= self._next:
            self._next = now + _RSS_SAMPLE_S
            self.sampled = max(self.sampled, _read_vmhwm(pid))

    def resolve(self, wait4_peak: int) -> int:
        if wait4_peak > self.parent_peak + self._MARGIN or self.sampled <= 0:
            return wait4_peak
        return self.sampled
