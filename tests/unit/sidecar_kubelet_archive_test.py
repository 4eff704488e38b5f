"""ops/kubelet_archive.py on archives built here in the kubelet's layout: what is unpacked and
what is refused, the container an archive names (containerd's and CRI-O's annotations), and an
import that becomes a signed checkpoint of ours, refused for another pod's namespace."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_cedana import contract
from sidecar.errors import CheckpointNotFound, ContentRefused, Forbidden, InvalidRequest
from sidecar.ops import kubelet_archive
from sidecar.storage import rootfs_diff, signing, store
from sidecar.storage.catalogue import Catalogue
from tests.unit.sidecar_support import make_config

REPO = Path(__file__).resolve().parents[2]
NAME = "checkpoint-counter_shop-main-2026-11-30T10:00:00Z.tar"
CONTAINERD = {"io.kubernetes.cri.sandbox-namespace": "shop",
              "io.kubernetes.cri.sandbox-name": "counter",
              "io.kubernetes.cri.container-name": "main",
              "io.kubernetes.cri.sandbox-id": "abc", "io.kubernetes.cri.sandbox-uid": "u-1",
              "io.kubernetes.cri.image-name": "docker.io/x/counter:1"}


def _archive(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None
             ) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def _members(annotations: dict[str, str] | None = None, *, gz: bool = True) -> dict[str, bytes]:
    diff = io.BytesIO()
    with tarfile.open(fileobj=diff, mode="w") as tar:
        info = tarfile.TarInfo("tmp/made")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    raw = diff.getvalue()
    return {
        "config.dump": json.dumps({"id": "c1", "name": "main_counter_shop_u-1_0",
                                   "rootfsImageName": "docker.io/x/counter:1",
                                   "checkpointedTime": "2026-11-30T10:00:00Z"}).encode(),
        "spec.dump": json.dumps({"annotations": annotations or CONTAINERD}).encode(),
        "checkpoint/inventory.img": b"inv", "checkpoint/pages-1.img": b"p" * 100,
        "checkpoint/descriptors.json": b"[]",
        "rootfs-diff.tar": gzip.compress(raw) if gz else raw,
        "container.log": b"log", "status": b"{}",
    }


@pytest.fixture
def config(tmp_path: Path) -> Any:
    kubelet = tmp_path / "kubelet-checkpoints"
    kubelet.mkdir()
    return make_config(tmp_path, kubelet_checkpoint_dir=kubelet)


def test_member_names() -> None:
    assert kubelet_archive.member_path("./checkpoint/pages-1.img") == \
        kubelet_archive.PurePosixPath("checkpoint/pages-1.img")
    assert kubelet_archive.member_path("spec.dump") == kubelet_archive.PurePosixPath("spec.dump")
    assert kubelet_archive.member_path("manifest.json") is None  # never taken from outside
    assert kubelet_archive.member_path("checkpoint/a/b") is None
    for bad in ("../etc/passwd", "/etc/passwd", "checkpoint/../../x"):
        with pytest.raises(ContentRefused):
            kubelet_archive.member_path(bad)


def test_identity_from_containerd_and_cri_o_annotations() -> None:
    assert kubelet_archive.identity({"annotations": CONTAINERD}) == {
        "namespace": "shop", "pod": "counter", "container": "main", "sandbox_id": "abc",
        "pod_uid": "u-1", "image": "docker.io/x/counter:1"}
    crio = {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "counter",
            "io.kubernetes.container.name": "main", "io.kubernetes.pod.uid": "u-2"}
    found = kubelet_archive.identity({"annotations": crio})
    assert (found["namespace"], found["pod"], found["container"], found["pod_uid"]) == \
        ("shop", "counter", "main", "u-2")
    assert kubelet_archive.identity({"annotations": "junk"})["pod"] == ""


def test_an_archive_becomes_a_signed_checkpoint(config: Any) -> None:
    _archive(config.kubelet_checkpoint_dir / NAME, _members())
    pod = {"metadata": {"name": "counter", "namespace": "shop", "uid": "u-1"}, "spec": {"a": 1}}
    entry = kubelet_archive.import_archive(config, namespace="shop", pod="counter", name=NAME,
                                           checkpoint_id="id-1", pod_object=pod)
    final = Path(entry["path"])
    manifest = store.verify(final, signing.helper_key(config))
    assert manifest.source["container"] == "main" and manifest.source["sandbox_id"] == "abc"
    assert manifest.source["pod_object"]["metadata"]["uid"] == "u-1"
    assert manifest.criu_options["with_rootfs"] and not manifest.criu_options["tcp_established"]
    # containerd's gzipped changed files, kept as they came, are what a restore applies
    rootfs = config.checkpoint_dir.parent / "rootfs"
    rootfs.mkdir()
    assert rootfs_diff.apply_diff(final, rootfs)
    assert (rootfs / "tmp" / "made").read_bytes() == b"hi"
    assert (final / "checkpoint" / "pages-1.img").read_bytes() == b"p" * 100
    assert Catalogue(config.checkpoint_dir).get("id-1")["kubelet_archive"] == NAME
    assert (config.kubelet_checkpoint_dir / NAME).is_file()  # left where it was


def test_another_pods_archive_is_refused_and_nothing_kept(config: Any) -> None:
    _archive(config.kubelet_checkpoint_dir / NAME, _members())
    with pytest.raises(Forbidden, match="pod shop/counter, not of other/counter"):
        kubelet_archive.import_archive(config, namespace="other", pod="counter", name=NAME,
                                       checkpoint_id="id-2")
    # refused from its spec.dump, before anything of it is written
    assert not list(config.checkpoint_dir.glob(".tmp-*"))
    with pytest.raises(CheckpointNotFound):
        Catalogue(config.checkpoint_dir).get("id-2")


def test_links_bad_names_and_missing_archives_are_refused(config: Any) -> None:
    _archive(config.kubelet_checkpoint_dir / NAME, _members(),
             links={"checkpoint/core-1.img": "/etc/shadow"})
    with pytest.raises(ContentRefused, match="not a regular file"):
        kubelet_archive.import_archive(config, namespace="shop", pod="counter", name=NAME,
                                       checkpoint_id="id-3")
    assert not list(config.checkpoint_dir.glob(".tmp-*"))
    for bad in ("../../etc/shadow", "checkpoint-x.tar", "x/" + NAME):
        with pytest.raises(InvalidRequest):
            kubelet_archive.archive_path(config, bad)
    with pytest.raises(CheckpointNotFound):
        kubelet_archive.archive_path(config, NAME.replace("counter", "gone"))


def test_a_corrupt_archive_or_a_member_twice_is_a_clear_refusal(config: Any) -> None:
    (config.kubelet_checkpoint_dir / NAME).write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InvalidRequest, match=f"cannot read {NAME}"):
        kubelet_archive.import_archive(config, namespace="shop", pod="counter", name=NAME,
                                       checkpoint_id="id-4")
    members = _members()
    path = _archive(config.kubelet_checkpoint_dir / NAME, members)
    with tarfile.open(path, "a") as tar:  # the same file again
        info = tarfile.TarInfo("checkpoint/pages-1.img")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(InvalidRequest, match="cannot take in"):
        kubelet_archive.import_archive(config, namespace="shop", pod="counter", name=NAME,
                                       checkpoint_id="id-5")
    assert not list(config.checkpoint_dir.glob(".tmp-*"))


def test_the_crd_the_plugin_and_the_helper_accept_the_same_names() -> None:
    crds = list(yaml.safe_load_all((REPO / "deploy" / "base" / "crds.yaml").read_text()))
    (checkpoint,) = [c for c in crds if c["spec"]["names"]["kind"] == "Checkpoint"]
    spec = checkpoint["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["kubeletArchive"]["pattern"] == \
        f"^{contract.KUBELET_ARCHIVE_PATTERN}$"
    assert kubelet_archive.ARCHIVE_NAME.pattern == contract.KUBELET_ARCHIVE_PATTERN
