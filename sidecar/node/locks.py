"""One operation per container at a time; a second one is refused at once, never queued."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sidecar.errors import OperationInProgress


@dataclass(frozen=True)
class RunningOperation:
    kind: str
    started: float


class ContainerLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, RunningOperation] = {}

    @contextmanager
    def hold(self, container_id: str, kind: str) -> Iterator[None]:
        with self._guard:
            current = self._held.get(container_id)
            if current is not None:
                age = time.monotonic() - current.started
                raise OperationInProgress(
                    f"a {current.kind} of container {container_id} has been running for "
                    f"{age:.1f}s; retry when it has finished",
                    container_id=container_id,
                    operation=current.kind,
                )
            self._held[container_id] = RunningOperation(kind, time.monotonic())
        try:
            yield
        finally:
            with self._guard:
                self._held.pop(container_id, None)
