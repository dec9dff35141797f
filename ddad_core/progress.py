"""Progress of the long steps of ``ddad fit`` and ``ddad eval``, and the time each step took.

One :class:`Progress` per run. Each long step runs inside ``with progress.step(name, total, unit) as step:`` and
calls ``step.update(n)`` as work gets done:

* on a terminal (``mode="bar"``, what ``auto`` picks when the stream is a TTY): a tqdm bar with the count, the rate
  and the ETA; a heartbeat thread redraws it every second, so the elapsed time moves even inside a long batch or a
  step without a known total (which shows its elapsed time and no ETA);
* otherwise (``mode="lines"``: a log file, a pipe, CI): a plain line when the step starts, one every ``interval``
  seconds while it runs -- from the heartbeat too, so a step that reports nothing for minutes still prints "still
  running" lines -- and one when it ends;
* ``mode="off"``: nothing is printed; the timings are still kept.

Every step's wall time is summed into :attr:`Progress.timings` (the fit writes them to ``bundle.json`` as
``metadata["fit_seconds"]``, the evaluation to its JSON as ``seconds_per_step``), and :meth:`Progress.summary`
formats them for the final line.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> progress = Progress(mode="lines", stream=out)
    >>> with progress.step("encode", total=4, unit="img") as step:
    ...     step.update(4)
    >>> sorted(progress.timings), out.getvalue().splitlines()[0]
    (['encode'], 'encode: started, 4 img')
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["MODES", "Progress", "Step", "as_progress", "format_seconds", "format_timings", "map_batches"]

#: Accepted values of ``mode`` (``ddad fit/eval --progress``).
MODES = ("auto", "bar", "lines", "off")

T = TypeVar("T")


def format_seconds(seconds: float) -> str:
    """``"1 h 02 min"`` / ``"3 min 05 s"`` / ``"42 s"`` / ``"0.4 s"``.

    Example:
        >>> format_seconds(3725), format_seconds(65), format_seconds(42.2), format_seconds(0.42)
        ('1 h 02 min', '1 min 05 s', '43 s', '0.4 s')
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(math.ceil(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def format_timings(timings: dict[str, float], total: float) -> str:
    """``"total 12 min 05 s: unet 8 min 10 s, latent_cache 2 min 40 s"`` (longest steps first).

    Example:
        >>> format_timings({"a": 2.0, "b": 65.0}, 70.0)
        'total 1 min 10 s: b 1 min 05 s, a 2.0 s'
    """
    parts = [f"{name} {format_seconds(s)}" for name, s in sorted(timings.items(), key=lambda kv: -kv[1])]
    return f"total {format_seconds(total)}: " + ", ".join(parts)


class Step:
    """A running step: ``update(n)`` after each batch, ``set_postfix(loss=...)`` for a figure to show beside it."""

    def __init__(self, progress: Progress, name: str, total: int | None, unit: str, initial: int = 0) -> None:
        self.progress, self.name, self.total, self.unit = progress, name, total, unit
        self.initial = self.count = initial  # units done before this run (a resumed training); not in the ETA
        self.postfix = ""
        self.started = time.perf_counter()
        self._last_line = self.started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = None
        mode = progress.mode
        if mode == "bar":
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=name,
                unit=unit,
                file=progress.stream,
                dynamic_ncols=True,
                leave=True,
                mininterval=0.5,
            )
        elif mode == "lines":
            size = f", {total} {unit}" if total is not None else ""
            resumed = f" (resuming after {initial})" if initial else ""
            progress.write(f"{name}: started{size}{resumed}")
        self._heartbeat = None
        if mode in ("bar", "lines"):
            self._heartbeat = threading.Thread(target=self._beat, name=f"progress-{name}", daemon=True)
            self._heartbeat.start()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        with self._lock:
            self.count += n
            if self._bar is not None:
                self._bar.update(n)
            elif self.progress.mode == "lines" and time.perf_counter() - self._last_line >= self.progress.interval:
                self._line()

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Yield ``items``, counting one unit each time the consumer comes back for the next (it is done then)."""
        for item in items:
            yield item
            self.update(1)

    def set_postfix(self, **values: Any) -> None:
        """Figures shown after the count (e.g. the latest loss)."""
        with self._lock:
            self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
            if self._bar is not None:
                self._bar.set_postfix_str(self.postfix, refresh=False)

    def status(self) -> str:
        """``"unet: 12/100 epoch (12 %), 3 min 05 s elapsed, ETA 22 min 40 s"`` (no ETA without a total)."""
        elapsed = self.elapsed
        if self.total:
            done = min(self.count, self.total)
            new = done - self.initial
            eta = format_seconds(elapsed / new * (self.total - done)) if new > 0 else "?"
            text = (
                f"{self.name}: {self.count}/{self.total} {self.unit} ({100 * done / self.total:.0f} %), "
                f"{format_seconds(elapsed)} elapsed, ETA {eta}"
            )
        else:
            counted = f"{self.count} {self.unit}, " if self.count else ""
            text = f"{self.name}: still running, {counted}{format_seconds(elapsed)} elapsed"
        return f"{text}, {self.postfix}" if self.postfix else text

    def _line(self) -> None:
        self._last_line = time.perf_counter()
        self.progress.write(self.status())

    def _beat(self) -> None:
        tick = 1.0 if self._bar is not None else min(1.0, self.progress.interval)
        while not self._stop.wait(tick):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()
                elif time.perf_counter() - self._last_line >= self.progress.interval:
                    self._line()

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        elapsed = self.elapsed
        if self._bar is not None:
            self._bar.close()
        elif self.progress.mode == "lines":
            new = self.count - self.initial
            counted = f"{new} {self.unit} in " if new else ""
            rate = f" ({elapsed / new:.2f} s/{self.unit})" if new else ""
            tail = f", {self.postfix}" if self.postfix else ""
            self.progress.write(f"{self.name}: done, {counted}{format_seconds(elapsed)}{rate}{tail}")


class Progress:
    """Progress output and step timings of one run (see the module docstring).

    Args:
        mode: ``auto`` (a bar on a terminal, lines otherwise), ``bar``, ``lines`` or ``off``.
        interval: Seconds between two plain lines of a running step (``lines`` mode).
        stream: Where bars and lines go (default ``sys.stderr``, where tqdm writes).

    Raises:
        ValueError: unknown ``mode`` or an ``interval`` that is not positive (the field is named).
    """

    def __init__(self, mode: str = "auto", interval: float = 30.0, stream: IO[str] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not interval > 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode = mode
        self.interval = float(interval)
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def step(self, name: str, total: int | None = None, unit: str = "img", initial: int = 0) -> Iterator[Step]:
        """Run one step of ``total`` units (None: unknown; ``initial`` of them done before); its wall time is added
        to ``timings[name]``, also when it raises."""
        handle = Step(self, name, total, unit, initial)
        try:
            yield handle
        finally:
            handle.close()
            self.timings[name] = self.timings.get(name, 0.0) + handle.elapsed

    def write(self, line: str) -> None:
        """One line of text, printed above a running bar (not into it); nothing in ``off`` mode."""
        if self.mode == "off":
            return
        if self.mode == "bar":
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def total_seconds(self) -> float:
        return time.perf_counter() - self.started

    def summary(self, total: float | None = None) -> str:
        """:func:`format_timings` of this run's steps (``total``: default the time since the Progress was made)."""
        return format_timings(self.timings, self.total_seconds() if total is None else total)


def as_progress(progress: Progress | bool | None) -> Progress:
    """A :class:`Progress` from the ``progress`` argument of the fitting functions: an instance is used as it is,
    ``True`` means ``auto``, ``False`` / ``None`` mean ``off``."""
    if isinstance(progress, Progress):
        return progress
    return Progress(mode="auto" if progress else "off")


def map_batches(fn: Callable[[Any], T], data: Sequence[Any], batch_size: int, step: Step | None = None) -> list[T]:
    """``[fn(data[s : s + batch_size]) for s in ...]``, counting each batch's length on ``step``.

    Example:
        >>> map_batches(sum, list(range(10)), 4)
        [6, 22, 17]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        out.append(fn(chunk))
        if step is not None:
            step.update(len(chunk))
    return out
