"""A fake clock for testing timing loops without waiting."""

from __future__ import annotations


class FakeClock:
    """A clock that only moves when a fake step says how long it took."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def step(self, durations):
        it = iter(durations)
        calls = {"n": 0}

        def run():
            calls["n"] += 1
            self.t += next(it)

        return run, calls
