"""Command-line parsing, usage text, and how errors become one line and an exit status."""
from __future__ import annotations

import json

import click
import pytest
import yaml
from click.testing import Result

from kubectl_cedana import errors
from kubectl_cedana.cli import main, report_error
from kubectl_cedana.errors import ExitCode
from kubectl_cedana.version import __version__
from tests.unit.plugin_fakeapi import runner

COMMANDS = ["checkpoint", "checkpoints", "doctor", "install", "list", "migrate", "restore",
            "uninstall", "version"]


def invoke(*args: str) -> Result:
    return runner().invoke(main, list(args), catch_exceptions=False)


def test_usage_is_shown_as_kubectl_cedana() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: kubectl cedana [OPTIONS] COMMAND [ARGS]...")
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == COMMANDS
    for flag in ("--kubeconfig", "--context", "-n, --namespace", "--request-timeout",
                 "-o, --output [table|wide|json|yaml]", "--debug"):
        assert flag in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("argv", [[], ["checkpoints", "--help"]])
def test_bare_group_shows_help_on_stdout(argv: list[str]) -> None:
    result = invoke(*argv)
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: kubectl cedana")
    assert result.stderr == ""


@pytest.mark.parametrize("argv,usage", [
    (["checkpoint", "-h"], "Usage: kubectl cedana checkpoint [OPTIONS] POD"),
    (["restore", "--help"], "Usage: kubectl cedana restore [OPTIONS] CHECKPOINT"),
    (["migrate", "--help"], "Usage: kubectl cedana migrate [OPTIONS] POD"),
    (["checkpoints", "rm", "--help"],
     "Usage: kubectl cedana checkpoints rm [OPTIONS] CHECKPOINTS..."),
    (["checkpoints", "prune", "--help"], "Usage: kubectl cedana checkpoints prune [OPTIONS]"),
])
def test_subcommand_usage(argv: list[str], usage: str) -> None:
    result = invoke(*argv)
    assert result.exit_code == 0
    assert result.stdout.startswith(usage)
    assert "--namespace" in result.stdout  # global flags are accepted after the command too


def test_list_and_checkpoints_take_all_namespaces() -> None:
    assert "-A, --all-namespaces" in invoke("list", "--help").stdout
    assert "-A, --all-namespaces" in invoke("checkpoints", "ls", "--help").stdout
    assert "-A, --all-namespaces" in invoke("checkpoints", "prune", "--help").stdout


@pytest.mark.parametrize("command", ["checkpoint", "restore", "migrate"])
def test_the_object_commands_share_their_flags(command: str) -> None:
    helptext = invoke(command, "--help").stdout
    for flag in ("--name NAME", "--wait / --no-wait", "--timeout DURATION",
                 "--dry-run [none|client|server]"):
        assert flag in helptext, flag


@pytest.mark.parametrize("argv,fragment", [
    (["list", "--bogus"], "(see 'kubectl cedana list --help')"),
    (["list", "--bogus"], "--bogus"),
    (["checkpoint"], "Missing argument 'POD'"),
    (["-o", "xml", "list"], "Invalid value for '-o' / '--output'"),
    (["restore", "abc"], "give exactly one of --into POD or --new-pod NAME"),
    (["restore", "abc", "--into", "a", "--new-pod", "b"], "give exactly one of --into"),
    (["restore", "abc", "--new-pod", "b", "-c", "x"], "-c/--container goes with --into"),
    (["restore", "abc", "--into", "a", "--node", "n"], "--node goes with --new-pod"),
    (["list", "--request-timeout", "soon"], "invalid duration 'soon'"),
    (["restore", "abc", "--new-pod", "b", "--timeout", "1x"], "invalid duration '1x'"),
    (["checkpoint", "pod", "--dry-run=later"], "Invalid value for '--dry-run'"),
    (["checkpoint", "pod", "--path", "/x"], "--path"),
    (["migrate", "pod", "--compression", "lz4"], "--compression"),
    (["checkpoints", "rm"], "Missing argument 'CHECKPOINTS...'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
])
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], fragment: str) -> None:
    result = invoke(*argv)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert fragment in lines[0]


def test_version_client_needs_no_cluster(tmp_path: object) -> None:
    table = invoke("--kubeconfig", "/nonexistent", "version", "--client")
    assert table.exit_code == 0
    assert table.stdout == f"Client Version: kubectl-cedana {__version__}\n"
    doc = json.loads(invoke("version", "--client", "-o", "json").stdout)
    assert doc["apiVersion"] == "kubectl-cedana/v1" and doc["kind"] == "Version"
    assert doc["client"]["version"] == __version__
    assert yaml.safe_load(invoke("-o", "yaml", "version", "--client").stdout) == doc


@pytest.mark.parametrize("exc,code", [
    (errors.CedanaError("x"), 1), (errors.UsageError("x"), 2), (errors.NotFoundError("x"), 3),
    (errors.ConflictError("x"), 4), (errors.HelperFailure("x"), 5),
    (errors.OperationTimeout("x"), 124), (errors.Interrupted(), 130),
    (errors.HelperNotInstalled("x"), 3),
    (errors.PermissionDenied("x", permission="get pods", status=403), 1),
    (errors.ApiNotFound("x", status=404), 3), (errors.ApiConflict("x", status=409), 4),
    (errors.ResourceFailed("x", code="checkpoint_not_found"), 3),
    (errors.ResourceFailed("x", code="already_restored"), 4),
    (errors.ResourceFailed("x", code="container_ambiguous"), 2),
    (errors.ResourceFailed("x", code="checkpoint_corrupted"), 5),
    (errors.ResourceFailed("x", code="some_future_code"), 5),
    (errors.ResourceFailed("x", code=""), 5),
    (KeyboardInterrupt(), 130), (click.exceptions.Abort(), 130),
    (RuntimeError("boom"), 1),
])
def test_every_exception_maps_to_an_exit_status(exc: BaseException, code: int,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert report_error(exc, debug=False) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("exc,status", [
    (errors.UsageError("x"), ExitCode.USAGE), (errors.NotFoundError("x"), ExitCode.NOT_FOUND),
    (errors.ConflictError("x"), ExitCode.CONFLICT), (errors.OperationTimeout("x"), 124),
    (KeyboardInterrupt(), 130), (ValueError("x"), ExitCode.ERROR),
])
def test_a_failing_command_exits_with_its_status(exc: BaseException, status: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The status reaches the process (what a shell script sees), not only report_error."""
    from kubectl_cedana import install

    def broken(*_args: object, **_kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(install, "render_manifests", broken)
    result = invoke("install", "--dry-run")
    assert result.exit_code == status
    assert result.stderr.lstrip("\n").startswith("error: ") and result.stdout == ""


def test_unexpected_exception_is_one_line_without_debug_and_traced_with(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kubectl_cedana import install

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(install, "render_manifests", broken)
    quiet = invoke("install", "--dry-run")
    assert quiet.exit_code == 1
    assert quiet.stderr == ("error: ZeroDivisionError: division by zero "
                            "(run with --debug for details)\n")
    loud = invoke("install", "--dry-run", "--debug")
    assert loud.exit_code == 1
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.rstrip().splitlines()[-1] == "error: ZeroDivisionError: division by zero"


def test_debug_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubectl_cedana import install

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError("bad")

    monkeypatch.setattr(install, "render_manifests", broken)
    monkeypatch.setenv("KUBECTL_CEDANA_DEBUG", "1")
    assert "Traceback" in invoke("install", "--dry-run").stderr


def test_hint_and_message_are_joined_on_one_line() -> None:
    error = errors.CedanaError("first\nsecond", hint="do\nthis")
    assert error.one_line() == "first second (do this)"


def test_debug_shows_the_end_of_criu_s_log(capsys: pytest.CaptureFixture[str]) -> None:
    status = {"phase": "Failed", "node": "n1", "errorCode": "dump_failed",
              "message": "CRIU: Error (criu/namespaces.c:1): Can't dump nested pid namespace",
              "criuLog": "(00.1) Error (criu/namespaces.c:1): Can't dump nested pid namespace\n"
                         "(00.2) Error (criu/cr-dump.c:2): Dumping FAILED.",
              "criuLogPath": "/var/lib/cedana/checkpoints/.failed-logs/x-dump.log"}
    failed = errors.ResourceFailed("checkpoint ns/c failed", code="dump_failed", node="n1",
                                   body=status)
    report_error(failed, debug=False)
    quiet = capsys.readouterr().err
    assert "CRIU's log" not in quiet and len(quiet.splitlines()) == 1
    report_error(failed, debug=True)
    lines = capsys.readouterr().err.splitlines()
    start = lines.index("debug: the end of CRIU's log "
                        "(/var/lib/cedana/checkpoints/.failed-logs/x-dump.log on node n1):")
    assert lines[start + 1:start + 3] == [
        "debug:   (00.1) Error (criu/namespaces.c:1): Can't dump nested pid namespace",
        "debug:   (00.2) Error (criu/cr-dump.c:2): Dumping FAILED."]
    assert not any("criuLog'" in line for line in lines)  # not twice, in the status dump
