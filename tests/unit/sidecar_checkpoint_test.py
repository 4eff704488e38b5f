"""checkpoint_container against a recorded runc root, a live process tree and a fake runc."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import HelperConfig
from sidecar.errors import (
    CheckpointExists,
    ContainerNotRunning,
    DumpFailed,
    IoUringUnsupported,
)
from sidecar.ops.checkpoint import SourceKept, checkpoint_container
from sidecar.ops.containers import Containers
from sidecar.storage import signing, store
from sidecar.storage.catalogue import Catalogue
from tests.unit.sidecar_support import (
    COUNTER,
    IO_URING_HOLDER,
    POD,
    bundle_of,
    install_runc_root,
    make_config,
    pod_process,
    process,
    stop,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[HelperConfig, Path]]:
    proc = pod_process()
    root = install_runc_root("containerd", tmp_path, {COUNTER: proc.pid})
    yield make_config(tmp_path), root
    stop(proc)


def test_checkpoint_writes_the_documented_layout(env: tuple[HelperConfig, Path]) -> None:
    config, root = env
    result = checkpoint_container(config, Containers(root), "default", POD, "counter",
                                  "runs/first", True)
    final = config.checkpoint_dir / "runs" / "first"
    assert result.checkpoint_path == final
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()) == [
        ".seal.json", "checkpoint/descriptors.json", "checkpoint/inventory.img",
        "checkpoint/pages-1.img", "config.dump", "dump.log", "manifest.json", "spec.dump",
        "stats-dump", "volumes.json",
    ]
    assert (final / "spec.dump").read_bytes() == \
        (bundle_of(root, COUNTER) / "config.json").read_bytes()
    config_dump = json.loads((final / "config.dump").read_text())
    assert config_dump["id"] == COUNTER
    assert config_dump["name"] == "counter"
    assert config_dump["rootfsImageName"] == "docker.io/library/busybox:1.36"
    assert config_dump["runtime"] == "runc"
    assert config_dump["createdTime"] == "2024-05-02T09:12:44.118522743Z"
    # signed with the node's own key: the helper was started without --signing-key
    key_file = config.checkpoint_dir / ".signing-key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    manifest = store.verify(final, signing.node_local_key(config.checkpoint_dir))
    assert manifest.signature is not None and manifest.signature["algorithm"] == "hmac-sha256"
    assert manifest.checkpoint_id == result.checkpoint_id
    assert manifest.source["container_id"] == COUNTER
    assert manifest.source["pod"] == POD and manifest.source["node"] == "node-1"
    assert manifest.tools == {"helper": "0.1.0", "runc": "1.1.5+fake", "criu": "4.1.1"}
    assert manifest.criu_options["link_remap"] is True
    assert manifest.criu_options["tcp_established"] is False
    recorded = dict(manifest.criu_options)
    assert recorded.pop("with_rootfs") is False  # the fake container has no overlay rootfs
    assert recorded.pop("volumes") == []  # nor a root (nor /dev/shm) of its own
    assert result.options == recorded
    assert result.size_bytes == store.directory_size(final)
    assert not list(final.parent.glob(".tmp-*")) and not (final / "work").exists()
    runc_args = json.loads((Path(config.runc_path).parent / "runc-args.json").read_text())
    assert runc_args[:3] == ["--root", str(root), "checkpoint"]
    # runc runs the `criu` first on its PATH: the configured one (or the guard, which runs it)
    runs = (Path(config.runc_path).parent / "runc-criu.txt").read_text()
    assert runs == os.path.realpath(config.criu_guard or config.criu_path)
    assert "--leave-running" in runc_args and runc_args[-1] == COUNTER
    assert "--tcp-established" not in runc_args
    entry = Catalogue(config.checkpoint_dir).get(result.checkpoint_id)
    assert entry["path"] == str(final) and entry["leave_running"] is True
    assert entry["status"] == "complete" and entry["container"] == "counter"
    assert config.criu_runc_config.read_text().splitlines()[1:] == ["link-remap",
                                                                   "skip-in-flight"]


def test_empty_path_goes_below_the_checkpoint_dir_by_id(env: tuple[HelperConfig, Path]) -> None:
    config, root = env
    result = checkpoint_container(config, Containers(root), "default", POD, "counter", None, False)
    assert result.checkpoint_path == config.checkpoint_dir / result.checkpoint_id
    runc_args = json.loads((Path(config.runc_path).parent / "runc-args.json").read_text())
    assert "--leave-running" not in runc_args


def test_failed_dump_leaves_nothing_and_carries_the_log_tail(
        env: tuple[HelperConfig, Path]) -> None:
    config, root = env
    (Path(config.runc_path).parent / "runc-fail").touch()
    with pytest.raises(DumpFailed) as err:
        checkpoint_container(config, Containers(root), "default", POD, "counter", "failed", True)
    tail = err.value.extra["log_tail"].splitlines()
    assert len(tail) == 40
    assert "consider using --tcp-established" in tail[-1]
    assert "criu failed" in err.value.extra["stderr_tail"]
    assert err.value.status == 500
    # the message names CRIU's first error, not runc's closing line
    assert "CRIU: Error (criu/sk-inet.c:188): inet: Connected TCP socket" in err.value.message
    # nothing of the checkpoint is left; CRIU's whole log is kept, and the error says where
    kept = Path(err.value.extra["log_path"])
    assert kept.parent == config.checkpoint_dir / ".failed-logs"
    whole = kept.read_text().splitlines()
    assert len(whole) == 101 and "consider using --tcp-established" in whole[-1]
    assert all(p.name.startswith((".catalogue", ".failed-logs"))
               for p in config.checkpoint_dir.iterdir())
    assert Catalogue(config.checkpoint_dir).list() == []


def test_only_the_newest_failed_logs_are_kept(env: tuple[HelperConfig, Path]) -> None:
    config, root = env
    (Path(config.runc_path).parent / "runc-fail").touch()
    logs = config.checkpoint_dir / ".failed-logs"
    logs.mkdir(parents=True)
    for i in range(25):
        old = logs / f"old-{i:02d}-dump.log"
        old.write_text("old")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    with pytest.raises(DumpFailed) as err:
        checkpoint_container(config, Containers(root), "default", POD, "counter", None, True)
    left = sorted(p.name for p in logs.iterdir())
    assert len(left) == 20 and Path(err.value.extra["log_path"]).name in left
    assert "old-05-dump.log" not in left and "old-24-dump.log" in left


def test_existing_destination_is_refused(env: tuple[HelperConfig, Path]) -> None:
    config, root = env
    taken = config.checkpoint_dir / "taken"
    taken.mkdir(parents=True)
    (taken / "something").write_text("x")
    with pytest.raises(CheckpointExists):
        checkpoint_container(config, Containers(root), "default", POD, "counter", "taken", True)
    (config.checkpoint_dir / "empty").mkdir()
    result = checkpoint_container(config, Containers(root), "default", POD, "counter", "empty",
                                  True)
    assert (result.checkpoint_path / "manifest.json").is_file()


def test_stopped_container_is_not_checkpointed(tmp_path: Path) -> None:
    root = install_runc_root("containerd", tmp_path, {})
    with pytest.raises(ContainerNotRunning) as err:
        checkpoint_container(make_config(tmp_path), Containers(root), "default", POD, "counter",
                             None, True)
    assert err.value.status == 409


def test_io_uring_is_refused_naming_the_process(tmp_path: Path) -> None:
    script = tmp_path / "uring.py"
    script.write_text(IO_URING_HOLDER)
    with process(sys.executable, str(script)) as holder:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        if not line.startswith("ready"):
            pytest.skip(f"io_uring not available here: {line.strip()}")
        root = install_runc_root("containerd", tmp_path, {COUNTER: holder.pid})
        config = make_config(tmp_path)
        with pytest.raises(IoUringUnsupported) as err:
            checkpoint_container(config, Containers(root), "default", POD, "counter", None, True)
    assert err.value.status == 422
    assert f"process {holder.pid} (python" in err.value.message
    assert not (Path(config.runc_path).parent / "runc-args.json").exists()


def test_after_listed_sees_the_listed_checkpoint_and_its_error_comes_back_kept(
        tmp_path: Path) -> None:
    proc = pod_process()
    try:
        root = install_runc_root("containerd", tmp_path, {COUNTER: proc.pid})
        config = make_config(tmp_path)
        seen: list[tuple[str, Path]] = []

        def hand_over(listed: list[tuple[str, Path]]) -> None:
            seen.extend(listed)
            # listed, complete and verifiable before the step runs
            assert Catalogue(config.checkpoint_dir).get(listed[0][0])["status"] == "complete"
            store.verify(listed[0][1], signing.helper_key(config))
            raise DumpFailed("the target is unreachable")

        with pytest.raises(SourceKept) as kept:
            checkpoint_container(config, Containers(root), "default", POD, "counter", None,
                                 False, after_listed=hand_over)
        assert isinstance(kept.value.cause, DumpFailed)
        (checkpoint_id, path), = seen
        assert path == config.checkpoint_dir / checkpoint_id and path.is_dir()  # kept
        # (that the container then goes on, not stopped, needs a real freezer and CRIU:
        # tests/e2e/test_peer_transfer.py, test_a_failed_hand_over_leaves_the_source_running)
        done: list[str] = []
        result = checkpoint_container(config, Containers(root), "default", POD, "counter", None,
                                      False, after_listed=lambda listed: done.append(listed[0][0]))
        assert done == [result.checkpoint_id]
    finally:
        stop(proc)
