"""Rendering (table, wide, json, yaml), durations, and the terminal-only progress line."""
from __future__ import annotations

import datetime
import io
import json
import time
from typing import Any

import pytest
import yaml

from kubectl_cedana.errors import UsageError
from kubectl_cedana.output import (
    Column,
    Progress,
    document,
    human_age,
    human_size,
    render_structured,
    render_table,
)
from kubectl_cedana.settings import parse_duration

UTC = datetime.timezone.utc  # noqa: UP017 (the plugin runs on 3.9)

ROWS: list[dict[str, Any]] = [
    {"pod": "counter", "container": "main", "pid": 4242, "image": "busybox"},
    {"pod": "a-much-longer-pod-name", "container": "c", "pid": None, "image": ""}]
COLUMNS = [Column("pod", "pod"), Column("container", "container"),
           Column("PID", "pid", wide=True), Column("IMAGE", lambda r: r["image"].upper(),
                                                   wide=True)]


def test_table_has_upper_case_headers_and_aligned_columns() -> None:
    text = render_table(ROWS, COLUMNS)
    assert text == ("POD                      CONTAINER\n"
                    "counter                  main\n"
                    "a-much-longer-pod-name   c\n")


def test_wide_adds_columns_and_marks_missing_values() -> None:
    lines = render_table(ROWS, COLUMNS, wide=True).splitlines()
    assert lines[0].split() == ["POD", "CONTAINER", "PID", "IMAGE"]
    assert lines[1].split() == ["counter", "main", "4242", "BUSYBOX"]
    assert lines[2].split() == ["a-much-longer-pod-name", "c", "<none>", "<none>"]


def test_structured_documents_are_stable() -> None:
    doc = document("ContainerList", items=ROWS)
    assert list(doc) == ["apiVersion", "kind", "items"]
    as_json = render_structured(doc, "json")
    assert json.loads(as_json) == doc
    assert as_json == render_structured(document("ContainerList", items=ROWS), "json")
    assert as_json.startswith('{\n  "apiVersion": "kubectl-cedana/v1",\n  "kind": "ContainerList"')
    as_yaml = render_structured(doc, "yaml")
    assert yaml.safe_load(as_yaml) == doc
    assert as_yaml.startswith("apiVersion: kubectl-cedana/v1\nkind: ContainerList\n")
    with pytest.raises(ValueError):
        render_structured(doc, "table")


@pytest.mark.parametrize("text,seconds", [
    ("30", 30.0), ("30s", 30.0), ("1m30s", 90.0), ("250ms", 0.25), ("2h", 7200.0),
    ("0", 0.0), ("1.5s", 1.5), ("1h2m3s", 3723.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "soon", "1x", "s", "10s5", "-1s"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(bad)


def test_human_size_and_age() -> None:
    assert human_size(512) == "512B"
    assert human_size(123456) == "120.6KiB"
    assert human_size(5 * 1024 ** 3) == "5.0GiB"
    assert human_size(None) == ""
    now = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert human_age("2024-05-01T11:59:15Z", now) == "45s"
    assert human_age("2024-05-01T11:00:00Z", now) == "60m"
    assert human_age("2024-05-01T06:00:00Z", now) == "6h"
    assert human_age("2024-04-20T12:00:00Z", now) == "11d"
    assert human_age("", now) == ""


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("working", stream=stream) as progress:
        progress.update("still working")
        time.sleep(0.3)
    assert stream.getvalue() == ""


def test_progress_draws_and_clears_on_a_terminal() -> None:
    stream = FakeTty()
    with Progress("working", stream=stream) as progress:
        time.sleep(0.35)
        progress.update("nearly done")
        time.sleep(0.25)
    out = stream.getvalue()
    assert "working (0s)" in out and "nearly done" in out
    assert out.endswith("\r\x1b[K")
