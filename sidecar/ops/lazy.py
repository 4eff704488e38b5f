"""Post-copy: a checkpoint whose memory stays on its node and is served, page by page, to the
one restore that takes it over (docs/architecture.md, "Post-copy migration").

On the source node `criu dump --lazy-pages` dumps everything but the memory and then serves the
memory on a connected socket (never a listening port); the helper holds the other end here,
under the checkpoint's id, until the target node's helper claims it once through the peer port
(ops/peer.py, op "pages") and relays it to the `criu lazy-pages` daemon of the restore there.
"""
from __future__ import annotations

import logging
import shutil
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sidecar.config import HelperConfig
from sidecar.errors import DumpFailed, HelperError
from sidecar.node import criu
from sidecar.storage import store
from sidecar.storage.catalogue import Catalogue

log = logging.getLogger(__name__)

#: how long a transfer that is given up has to end (CRIU resumes the tree) before it is killed
END_GRACE_S = 30.0


@dataclass
class Served:
    """The memory of one checkpoint, served by its dump to whoever holds `relay_end`; what the
    restoring helper said of its lazy-pages daemon's end (CRIU's page server takes the end of
    its connection for a finished transfer, even when the daemon died: only that word counts).
    """

    checkpoint_id: str
    dump: criu.LazyDump
    relay_end: socket.socket
    claimed: bool = field(default=False)
    #: CRIU's work directory (its log): outside the checkpoint, whose files are signed before
    #: CRIU has ended (it goes on logging while it serves)
    work_dir: Path | None = field(default=None)
    outcome: dict[str, Any] | None = field(default=None)
    done: threading.Event = field(default_factory=threading.Event)

    def heard(self, outcome: dict[str, Any]) -> None:
        self.outcome = outcome

    def relayed(self, whole: bool) -> None:
        if not whole and self.outcome is None:
            self.outcome = {"ok": False, "reason": "the relay to the restoring node broke"}
        self.done.set()

    def finish(self, timeout: float) -> None:
        """Until every page arrived and the restoring side said so; DumpFailed otherwise (the
        tree is then left as it is: frozen, for the caller to let go on)."""
        self.dump.wait(timeout)
        if not self.done.wait(END_GRACE_S):
            raise DumpFailed(f"the memory of checkpoint {self.checkpoint_id} went, but the "
                             "restoring node never said it arrived")
        outcome = self.outcome or {}
        if outcome.get("ok") is not True:
            reason = str(outcome.get("reason") or "no word from the restoring node")[:500]
            raise DumpFailed(f"the memory of checkpoint {self.checkpoint_id} did not all "
                             f"arrive: {reason}")


class Serving:
    """The checkpoints whose memory this helper serves, by id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._served: dict[str, Served] = {}

    def add(self, served: Served) -> None:
        with self._lock:
            self._served[served.checkpoint_id] = served

    def get(self, checkpoint_id: str) -> Served | None:
        with self._lock:
            return self._served.get(checkpoint_id)

    def claim(self, checkpoint_id: str) -> Served | None:
        """The served memory, for the one connection that relays it: None when there is none,
        or another connection has it."""
        with self._lock:
            served = self._served.get(checkpoint_id)
            if served is None or served.claimed:
                return None
            served.claimed = True
            return served

    def end(self, checkpoint_id: str) -> None:
        """No longer served: a transfer still going is given up (CRIU resumes the tree; the
        caller's freezer keeps it frozen until it lets go)."""
        with self._lock:
            served = self._served.pop(checkpoint_id, None)
        if served is None:
            return
        try:
            served.relay_end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        served.relay_end.close()
        if served.dump.running():
            log.warning("the post-copy transfer of checkpoint %s is given up", checkpoint_id)
            try:
                served.dump.wait(END_GRACE_S)
            except DumpFailed as exc:
                log.warning("%s", exc.message, extra={"checkpoint_id": checkpoint_id})
        if served.work_dir is not None:
            shutil.rmtree(served.work_dir, ignore_errors=True)


#: this helper's
SERVING = Serving()

_arriving_lock = threading.Lock()
#: the containers of this node a post-copy restore is still feeding (container id -> the
#: checkpoint): a dump of one now would read pages that are not there yet (and freeze the
#: daemon that brings them, which runs in the same cgroups)
_ARRIVING: dict[str, str] = {}


def arriving(container_id: str, checkpoint_id: str | None) -> None:
    """Say that the memory of `checkpoint_id` is arriving into the container (None: it has
    all arrived, or stopped)."""
    with _arriving_lock:
        if checkpoint_id is None:
            _ARRIVING.pop(container_id, None)
        else:
            _ARRIVING[container_id] = checkpoint_id


def still_arriving(container_id: str) -> str | None:
    """The checkpoint whose memory is still arriving into the container, if any."""
    with _arriving_lock:
        return _ARRIVING.get(container_id)


def forget(config: HelperConfig, checkpoint_id: str) -> None:
    """A post-copy checkpoint, from this node's catalogue and disk: without the memory it left
    behind (or that went to the restored process) it can never be restored."""
    try:
        Catalogue(config.checkpoint_dir).delete(checkpoint_id)
    except (HelperError, OSError) as exc:
        log.warning("cannot delete post-copy checkpoint %s: %s", checkpoint_id, exc)


def work_dir_of(checkpoint_dir: Path, checkpoint_id: str) -> Path:
    """Where CRIU works (and logs) while it serves a checkpoint's memory: a temporary of the
    checkpoint directory, which a restarted helper removes (its CRIU died with it)."""
    return checkpoint_dir / f"{store.TEMP_PREFIX}lazy-{checkpoint_id}"


def start(criu_path: str, plan: criu.DumpPlan, checkpoint_id: str, timeout: float,
          what: str) -> Served:
    """Dump everything but the memory (`plan` without its lazy fields; its work_dir made here
    and removed when the memory is no longer served) and serve the memory under
    `checkpoint_id` until the restore that takes it claims it (SERVING)."""
    try:
        plan.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ours, theirs = socket.socketpair()
    except OSError as exc:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
        raise DumpFailed(f"checkpoint of {what} failed: {exc}") from exc
    try:
        dump = criu.start_lazy_dump(
            criu_path, replace(plan, lazy_socket_fd=theirs.fileno()),
            timeout, what)
    except BaseException:
        ours.close()
        shutil.rmtree(plan.work_dir, ignore_errors=True)
        raise
    finally:
        theirs.close()
    served = Served(checkpoint_id, dump, ours, work_dir=plan.work_dir)
    SERVING.add(served)
    return served
