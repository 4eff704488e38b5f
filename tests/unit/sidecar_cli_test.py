"""The cedana-helper command line and its JSON log lines."""
from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from sidecar.cli import main
from sidecar.logs import JsonFormatter


def test_version_command() -> None:
    result = CliRunner().invoke(main, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == "0.1.0"


def test_serve_requires_a_checkpoint_dir() -> None:
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2
    assert "--checkpoint-dir" in result.output


def test_serve_defaults_in_help() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "1324" in result.output and "/run/containerd/runc/k8s.io" in result.output


def test_serve_limits_in_help() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for flag, default in (("--max-operations", "8"), ("--max-operations-per-namespace", "4"),
                          ("--header-timeout", "10.0"), ("--body-timeout", "60.0"),
                          ("--keep-alive-timeout", "5"), ("--max-connections", "64"),
                          ("--max-header-bytes", "32768")):
        after = text.split(flag + " ", 1)[1]  # its own default is the first that follows
        assert after.split("[default: ", 1)[1].startswith((default + "]", default + ";")), flag
    assert "--max-checkpoint-dir-bytes" in text and "25% of its filesystem" in text


def test_serve_refuses_limits_out_of_range() -> None:
    for args in (["--header-timeout", "0"], ["--max-operations", "-1"],
                 ["--max-header-bytes", "100"], ["--keep-alive-timeout", "0"]):
        result = CliRunner().invoke(main, ["serve", "--checkpoint-dir", "/nonexistent", *args])
        assert result.exit_code == 2, args


def test_json_log_line_carries_extra_fields() -> None:
    record = logging.makeLogRecord({
        "name": "sidecar.access", "levelname": "INFO", "msg": "POST /checkpoint %s",
        "args": (200,), "method": "POST", "status": 200, "checkpoint_id": "abc",
        "color_message": "ignored",
    })
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /checkpoint 200"
    assert (line["method"], line["status"], line["checkpoint_id"]) == ("POST", 200, "abc")
    assert line["level"] == "info" and "color_message" not in line


def test_the_placeholder_image_is_the_helpers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.cli import own_image

    class Kube:
        def get_pod(self, namespace: str, name: str) -> dict[str, object]:
            assert (namespace, name) == ("cedana-system", "cedana-helper-x1")
            return {"spec": {"containers": [{"name": "log", "image": "busybox"},
                                            {"name": "helper", "image": "reg/helper:2"}]}}

    monkeypatch.delenv("POD_NAME", raising=False)
    assert own_image(Kube()) is None  # not in a pod: placeholders run /bin/sh
    monkeypatch.setenv("POD_NAMESPACE", "cedana-system")
    monkeypatch.setenv("POD_NAME", "cedana-helper-x1")
    assert own_image(Kube()) == "reg/helper:2"
