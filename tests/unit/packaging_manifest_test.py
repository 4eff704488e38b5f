"""plugin-manifest.yaml passes krew's checks and krew-index's review rules; each rule is shown
to catch the mistake it is there for (hack/dist_krew.py holds the rules)."""
from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_cedana.version import __version__

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))
import dist  # noqa: E402
import dist_krew  # noqa: E402

Mutation = Callable[[dict[str, Any]], None]


def manifest() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "plugin-manifest.yaml").read_text()))


def test_the_repository_manifest_is_valid() -> None:
    assert dist_krew.validate(manifest()) == []


def test_platforms_are_the_one_pure_python_archive() -> None:
    platforms = manifest()["spec"]["platforms"]
    pairs = [(p["selector"]["matchLabels"]["os"], p["selector"]["matchLabels"]["arch"])
             for p in platforms]
    assert ("linux", "amd64") in pairs and len(set(pairs)) == len(pairs)
    for entry in platforms:
        assert entry["uri"] == dist.release_uri(__version__)
        assert entry["bin"] == "kubectl-cedana"
        assert entry["files"] == [{"from": "kubectl-cedana", "to": "."},
                                  {"from": "LICENSE", "to": "."}]
    assert dist_krew.pick_platform(manifest(), "linux", "amd64") == platforms[0]
    with pytest.raises(dist_krew.KrewError, match="windows/amd64"):
        dist_krew.pick_platform(manifest(), "windows", "amd64")


@pytest.mark.parametrize("older", [True, False])
def test_the_zipapp_entry_point_refuses_a_python_below_the_floor(
        older: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The zipapp's __main__ run on a pretended older (or the oldest allowed) Python."""
    major, minor = dist.MIN_PYTHON
    monkeypatch.setattr(sys, "version_info", (major, minor - 1 if older else minor, 0))
    monkeypatch.setattr(sys, "argv", ["kubectl-cedana", "version", "--client"])
    monkeypatch.setenv("KUBECTL_CEDANA_NO_CACHE", "1")  # this test's own modules, not a cache
    with pytest.raises(SystemExit) as exited:
        exec(compile(dist.main_py({}), "__main__.py", "exec"),
             {"__name__": "__main__", "__file__": "/nonexistent/kubectl-cedana/__main__.py"})
    captured = capsys.readouterr()
    if older:
        assert exited.value.code == 1
        assert captured.err == (f"error: kubectl-cedana needs python3 >= {major}.{minor} "
                                f"(this is {major}.{minor - 1})\n")
    else:
        assert exited.value.code == 0
        assert captured.out == f"Client Version: kubectl-cedana {__version__}\n"


def _set(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return mutate


_DELETE = object()


def _duplicate_first_platform(doc: dict[str, Any]) -> None:
    doc["spec"]["platforms"].append(copy.deepcopy(doc["spec"]["platforms"][0]))


BROKEN: dict[str, tuple[Mutation, str]] = {
    "api version": (_set("apiVersion", "krew.googlecontainertools.github.com/v1alpha1"),
                    "apiVersion"),
    "kind": (_set("kind", "Plugins"), "kind"),
    "name with capitals": (_set("metadata.name", "Cedana"), "metadata.name"),
    "version without v": (_set("spec.version", __version__), "spec.version"),
    "version not semver": (_set("spec.version", "v0.1"), "spec.version"),
    "homepage missing": (_set("spec.homepage", _DELETE), "spec.homepage"),
    "long short description": (_set("spec.shortDescription",
                                    "Checkpoint and restore running containers of "
                                    "Kubernetes pods with CRIU"), "shortDescription"),
    "short description sentence": (_set("spec.shortDescription", "Checkpoints containers."),
                                   "shortDescription"),
    "description with options": (_set("spec.description",
                                       "Checkpoints containers.\nUse --leave-running to keep "
                                       "it going.\n"), "description"),
    "description as a flag list": (_set("spec.description",
                                        "Checkpoints containers.\n- checkpoint POD\n"),
                                   "description"),
    "caveats without python": (_set("spec.caveats", "Run kubectl cedana install first.\n"),
                               "caveats"),
    "no platforms": (_set("spec.platforms", []), "platforms"),
    "sha256 uppercase": (_set("spec.platforms.0.sha256", "AB" * 32), "sha256"),
    "sha256 short": (_set("spec.platforms.0.sha256", "ab" * 31), "sha256"),
    "uri not https": (_set("spec.platforms.0.uri", "http://example.com/a.tar.gz"), "uri"),
    "bin missing": (_set("spec.platforms.0.bin", ""), "bin"),
    "bin leaves the directory": (_set("spec.platforms.0.bin", "../kubectl-cedana"), "bin"),
    "selector on another label": (_set("spec.platforms.0.selector.matchLabels",
                                       {"os": "linux", "arch": "amd64", "distro": "debian"}),
                                  "selector"),
    "selector by expression": (_set("spec.platforms.0.selector",
                                    {"matchExpressions": [
                                        {"key": "os", "operator": "In", "values": ["linux"]},
                                        {"key": "arch", "operator": "In", "values": ["amd64"]},
                                    ]}),
                               "selector"),
    "overlapping platforms": (_duplicate_first_platform, "overlap"),
    "files rule without to": (_set("spec.platforms.0.files.1.to", ""), "files"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_rule_catches_its_mistake(case: str) -> None:
    mutate, needle = BROKEN[case]
    doc = manifest()
    mutate(doc)
    problems = dist_krew.validate(doc)
    assert len(problems) == 1, problems
    assert needle in problems[0]


def test_the_release_copy_differs_only_in_its_sha256_and_header() -> None:
    template = (REPO / "plugin-manifest.yaml").read_text()
    released = dist.release_manifest(template, __version__, "ab" * 32)
    doc = yaml.safe_load(released)
    assert dist_krew.validate(doc) == []
    assert {p["sha256"] for p in doc["spec"]["platforms"]} == {"ab" * 32}
    expected = manifest()
    for entry in expected["spec"]["platforms"]:
        entry["sha256"] = "ab" * 32
    assert doc == expected
    with pytest.raises(dist.DistError, match="spec.version"):
        dist.release_manifest(template, "9.9.9", "ab" * 32)
