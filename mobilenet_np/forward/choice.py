"""Choosing, call by call, the fastest of a few ways to run the same work (issue 16).

A small batch on 2 threads splits every layer across the threads: about 50 parallel regions per
image, each ending in a join.  On a quiet machine that is the fastest way; when another process
keeps one of the two cores busy, every join waits for the descheduled thread's next time slice,
and a 1 ms image took 50-800 ms (up to 1.3 s) when measured.  Running the whole batch on the
calling thread waits on no one; sharing the images out to worker threads (one chunk at a time each) waits
only at the end.  The ways give identical results (the same per-tile arithmetic), so the
engine may take any: it times the calls and takes the one that has been fastest lately, and
now and then tries the others again, because the load changes.  Only calls whose threads are
awake are timed (``Chooser.run``): waking sleeping threads is a cost of the pause before a
call, not of the way.

``Chooser`` keeps that record per key (input size, batch, threads) and per calling thread, so
that threads calling one model at once need no lock.  Its clock is an argument, so that a test
can make one way look slow without timing anything.
"""

from __future__ import annotations

import threading
import time

WINDOW = 4          # recent calls per way that make its estimate (their mean: a way that is
                    # fast half the time and 50x slower otherwise must lose to a steady one)
PROBE_FIRST = 16    # calls between tries of the ways not chosen, at first and after a switch
PROBE_MOST = 4096   # ... doubling each time a try loses (x16 when it took over 4 times the
                    # chosen way's mean), up to this many calls
IDLE = 0.002        # seconds since the calling thread's previous call after which a call takes
                    # the chosen way untimed: its threads have gone to sleep (``Chooser.run``)


class _Record:
    __slots__ = ("calls", "choice", "counts", "interval", "means", "next_probe", "times", "turn")

    def __init__(self, ways: int):
        self.times: list[list[float]] = [[] for _ in range(ways)]
        self.means = [float("inf")] * ways      # of each way's recent times (inf: never timed)
        self.counts = [0] * ways                # calls of each way
        self.choice = 0
        self.calls = 0
        self.next_probe = 1         # the second call tries another way
        self.interval = PROBE_FIRST
        self.turn = 0               # which of the ways not chosen the next try takes


class Chooser:
    """Which of several ways to run the next call for a key, and what the calls cost.  Way 0
    is the preferred one (taken until another is known to be faster).  The number of ways must
    stay the same for a key."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self._local = threading.local()

    def _record(self, key, ways: int = 2) -> _Record:
        try:
            records = self._local.records
        except AttributeError:
            records = self._local.records = {}
        record = records.get(key)
        if record is None:
            if len(records) >= 16:      # a few input sizes and batches at a time
                records.clear()
            record = records[key] = _Record(ways)
        return record

    def run(self, key, ways):
        """Run one of ``ways`` (callables taking no argument, doing the same work), time it, and
        return its result.  Way 0 runs on the calling thread; the others use worker threads.

        Only calls whose threads are awake are timed.  After a pause (more than IDLE since the
        thread's previous call) the workers have gone to sleep (OpenMP's spin lasts well under
        IDLE), and so they have after calls of way 0; the next call of a threaded way wakes
        them: on this machine's virtual CPUs that took ~0.5 ms, and 4-10 ms once another
        library (TensorFlow) had run in the process, against a steady 0.7 ms for V1 0.5/160
        split over 2 threads.  Timed, such calls kept the split way out for hundreds of calls
        (a try that loses waits longer): the benchmark's blocks of back-to-back calls, each
        after a pause, ran on one thread.  So a call after a pause takes the chosen way,
        untimed; a try of a threaded way right after a way-0 call runs untimed too, and the
        try is made again on the next call, with the threads awake.  Calls that always come
        after a pause keep way 0 unless back-to-back calls chose another."""
        record = self._record(key, len(ways))
        local = self._local
        clock = self.clock
        start = clock()
        last = getattr(local, "last_end", None)
        paused = last is not None and start - last > IDLE
        way = record.choice
        probing = not paused and record.calls >= record.next_probe
        turn = record.turn
        if probing:     # the ways not chosen take turns, any timed fewer than twice first
            others = [i for i in range(len(ways)) if i != way]
            untried = [i for i in others if record.counts[i] < 2]
            if untried:
                way = untried[0]
            else:
                way = others[turn % len(others)]
                turn += 1
        awake = not paused and (way == 0 or getattr(local, "threaded", False))
        try:
            result = ways[way]()
        finally:
            local.last_end = end = clock()
            local.threaded = way != 0
        if awake:
            record.turn = turn
            self._update(record, way, end - start, probing)
        return result

    def chosen(self, key) -> int:
        """The way the next ordinary (not probing) call for ``key`` takes on this thread."""
        return self._record(key).choice

    @staticmethod
    def _update(record: _Record, way: int, seconds: float, probing: bool) -> None:
        times, means, counts = record.times[way], record.means, record.counts
        times.append(seconds)
        counts[way] += 1
        if len(times) > WINDOW or counts[way] == 2:
            del times[0]        # (the first call of a way pays one-time costs: buffers, threads)
        means[way] = sum(times) / len(times)
        record.calls += 1
        before = record.choice
        warming = counts[way] <= 2
        if probing and not warming:
            # A losing try makes the next one wait longer: under load a try of the split way
            # can cost hundreds of calls (measured: up to 1.3 s against 1.2 ms), and a try
            # every 256 calls tripled the mean latency.  A winning try keeps the pace (one
            # fast call of a way that is slow half the time must not bring the tries back to
            # every 16th call), and its time replaces the way's older ones: with tries far
            # apart, a stall long ago would otherwise keep the way out for hundreds of calls
            # (measured: 2-thread batch 1 held on the one-thread way on a quiet machine).
            if seconds >= means[before]:
                grow = 16 if seconds > 4 * means[before] else 2
                record.interval = min(grow * record.interval, PROBE_MOST)
            else:
                times[:] = [seconds]
                means[way] = seconds
            record.next_probe = record.calls + record.interval
        best = before
        for i, mean in enumerate(means):
            if mean < means[best]:
                best = i
        if best != before:
            record.choice = best
            record.interval = PROBE_FIRST
            record.next_probe = record.calls + PROBE_FIRST
        if any(c < 2 for i, c in enumerate(counts) if i != record.choice):
            record.next_probe = max(record.calls, 1)    # a way timed less than twice: try it next
