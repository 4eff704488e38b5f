"""deploy/Dockerfile builds the node programs the lab runs: the same CRIU version from the same
Debian suite, runc and ctr from the same pinned Go modules."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _lib_setting(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", (REPO / "hack" / "lib.sh").read_text(), re.M)
    assert match, f"{name} not set in hack/lib.sh"
    return match.group(1)


def test_dockerfile_builds_the_labs_criu() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"ARG CRIU_VERSION={_lib_setting('CRIU_VERSION')}\n" in dockerfile
    suite = _lib_setting("CRIU_SUITE")
    assert f'apt-get source --download-only "criu/{suite}"' in dockerfile
    assert f"Suites: {suite}" in dockerfile


def test_dockerfile_builds_runc_and_ctr_from_the_pinned_modules() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY hack/gobuild/(\w+) /src/\1$", dockerfile, re.M))
    assert copied == {"runc", "containerd"}
    for module in copied:  # each is a module whose go.sum pins its dependencies
        assert (REPO / "hack" / "gobuild" / module / "go.sum").stat().st_size > 0
    assert "GOFLAGS=-mod=readonly" in dockerfile  # nothing beyond go.sum
    installed = re.search(r"COPY --from=go (.+) /usr/local/sbin/", dockerfile)
    assert installed and installed.group(1).split() == ["/out/runc", "/out/ctr"]


def test_dockerfile_patches_criu_as_the_lab_does() -> None:
    """The image's CRIU carries the patches the lab's does (hack/build-criu.sh applies
    hack/patches/criu-*.patch): post-copy's pause depends on criu-lazy-from-task.patch."""
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "COPY hack/patches/ /patches/\n" in dockerfile
    assert 'for p in /patches/criu-*.patch; do patch -d "criu-${CRIU_VERSION}" -p1' in dockerfile
    build = (REPO / "hack" / "build-criu.sh").read_text()
    assert '"$here"/patches/criu-*.patch' in build
    assert (REPO / "hack" / "patches" / "criu-lazy-from-task.patch").is_file()

