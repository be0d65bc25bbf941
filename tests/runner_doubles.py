"""Test doubles shared by the runner's tests: a progress bar that records, and a
statistic whose merge records the merge order."""

import dataclasses

import pytest


class RecordingBar:
    """Stand-in for ``tqdm.auto.tqdm`` that records its arguments and every ``update``."""

    bars = []

    def __init__(self, *args, **kwargs):
        self.kwargs = kwargs
        self.updates = []
        RecordingBar.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.updates.append(n)


def recording_bars(monkeypatch):
    """Patch tqdm with :class:`RecordingBar`; yield the list of bars made (the body of a
    ``bars`` fixture)."""
    tqdm_auto = pytest.importorskip("tqdm.auto")
    RecordingBar.bars = []
    monkeypatch.setattr(tqdm_auto, "tqdm", RecordingBar)
    yield RecordingBar.bars


@dataclasses.dataclass
class Trace:
    """A statistic whose merge is a concatenation: it records the merge order."""

    chunks: tuple

    def merge(self, other):
        return Trace(self.chunks + other.chunks)
