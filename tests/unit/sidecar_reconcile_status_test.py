"""What a node helper writes into a cedana.io object's status when an operation fails."""
from __future__ import annotations

from sidecar.errors import DumpFailed
from sidecar.reconcile.common import STATUS_LOG_BYTES, failed_with


def test_a_failed_object_carries_the_end_of_criu_s_log() -> None:
    """An object's status after a CRIU failure: the message, CRIU's log tail (at most 8 KiB,
    its end) and where the whole log is kept."""
    obj = {"metadata": {"name": "c", "namespace": "ns", "generation": 1}}
    tail = "x" * 10000 + "\nError (criu/cr-dump.c:1): Dumping FAILED."
    status = failed_with(obj, DumpFailed("CRIU: Error (a): b", log_tail=tail,
                                         log_path="/ckpt/.failed-logs/1-dump.log"))
    assert status["errorCode"] == "dump_failed" and status["message"] == "CRIU: Error (a): b"
    assert len(status["criuLog"]) == STATUS_LOG_BYTES and status["criuLog"].endswith("FAILED.")
    assert status["criuLogPath"] == "/ckpt/.failed-logs/1-dump.log"
    plain = failed_with(obj, DumpFailed("no log"))
    assert "criuLog" not in plain and "criuLogPath" not in plain
