"""Progress display: a tqdm bar when tqdm is installed and stderr is a terminal, else the
plain status line of :class:`StatusLine` (fits) or nothing (sweeps)."""

from __future__ import annotations

import sys
import time

__all__ = ["wanted", "fit_progress", "progress_bar", "StatusLine"]

BAR_DELAY = 1.0  # seconds a fit runs before its bar appears (short fits stay quiet)


def wanted(progress) -> bool:
    """``progress`` True/False, or None: show when stderr is a terminal."""
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    return bool(progress)


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    isatty = getattr(sys.stderr, "isatty", None)
    return tqdm if isatty and isatty() else None


class _FitBar:
    """A tqdm bar over steps (or flow time) with the train loss as postfix."""

    def __init__(self, tqdm, end, label):
        self.bar = tqdm(
            total=end,
            unit=label,
            desc="fastdmf",
            mininterval=0.5,
            delay=BAR_DELAY,
            dynamic_ncols=True,
        )
        self.pos = 0

    def update(self, position, loss=None):
        self.bar.update(position - self.pos)
        self.pos = position
        if loss is not None:
            self.bar.set_postfix_str(f"train loss {loss:.3e}", refresh=False)

    def close(self):
        self.bar.close()


def fit_progress(end, label, progress):
    """The display of one fit, or None: a tqdm bar on a terminal with tqdm, else (only when
    ``progress`` is True) the status line."""
    if not wanted(progress):
        return None
    tqdm = _tqdm()
    if tqdm is not None:
        return _FitBar(tqdm, end, label)
    if progress is None:
        return None
    return StatusLine(end, label)


class StatusLine:
    """One status line on stderr, rewritten at most every ``every`` seconds."""

    def __init__(self, end, label="step", every=0.5, stream=None):
        self.end, self.label, self.every = end, label, every
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.loss = float("nan")

    def update(self, step, loss=None):
        if loss is not None:
            self.loss = loss
        now = time.perf_counter()
        if now - self.last < self.every and step < self.end:
            return
        self.last = now
        rate = step / max(now - self.start, 1e-9)
        self.stream.write(
            f"\rfastdmf: {self.label} {step:,.6g}/{self.end:,.6g}  train loss "
            f"{self.loss:.3e}  {rate:,.0f} {self.label}s/s "
        )
        self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


class _Null:
    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(total, label, progress):
    """A bar counting ``total`` items (sweep tasks): tqdm, or a no-op without it."""
    tqdm = _tqdm() if wanted(progress) else None
    if tqdm is None:
        return _Null()
    return tqdm(total=total, unit=label, desc="fastdmf sweep", dynamic_ncols=True)
