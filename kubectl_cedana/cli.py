"""`kubectl cedana`: the command line. Parses, calls a plain function, renders.

Start-up cost matters (kubectl runs the plugin for every `kubectl cedana ...`): nothing here
imports the Kubernetes client or PyYAML at module level; the modules imported below only use
the standard library until a command actually talks to the cluster.
"""
from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click
from click.core import ParameterSource

from kubectl_cedana import operations
from kubectl_cedana.contract import COMPRESSIONS, DEFAULT_COMPRESSION
from kubectl_cedana.errors import (
    CedanaError,
    ExitCode,
    HelperFailure,
    HelperNotInstalled,
    UsageError,
)
from kubectl_cedana.kube import KubeClient
from kubectl_cedana.output import (
    Column,
    Progress,
    document,
    echo,
    human_age,
    human_size,
    render_structured,
    render_table,
    stderr_line,
    to_json,
    to_yaml,
    to_yaml_stream,
)
from kubectl_cedana.settings import OUTPUT_FORMATS, Settings, parse_duration
from kubectl_cedana.version import __version__

PROG_NAME = "kubectl cedana"
DEBUG_ENV = "KUBECTL_CEDANA_DEBUG"


# -- the one place errors become a line on stderr ---------------------------------------------
def report_error(exc: BaseException, debug: bool) -> int:
    """Print one `error: ...` line (plus a traceback with --debug); return the exit status."""
    code: int
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", None)  # click >= 8.2
    if no_args is not None and isinstance(exc, no_args) and exc.ctx is not None:
        echo(exc.ctx.get_help())  # a bare `kubectl cedana` (or group) shows its help, as 8.1 did
        return int(ExitCode.OK)
    if isinstance(exc, (click.exceptions.Abort, KeyboardInterrupt)):
        message, code = "interrupted", ExitCode.INTERRUPTED
    elif isinstance(exc, click.ClickException):
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            message = f"{message.rstrip('.')} (see '{ctx.command_path} --help')"
        code = exc.exit_code
    elif isinstance(exc, CedanaError):
        message, code = exc.one_line(), int(exc.exit_code)
        body = getattr(exc, "body", None)
        if debug and body:
            stderr_line(f"debug: helper answered {body}")
    else:
        message = f"{type(exc).__name__}: {exc}"
        if not debug:
            message += " (run with --debug for details)"
        code = ExitCode.ERROR
    if debug and not isinstance(exc, (click.exceptions.Abort, click.UsageError)):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    stderr_line(f"error: {' '.join(message.split())}")
    return int(code)


class CedanaGroup(click.Group):
    """The root command: always named `kubectl cedana`, errors handled in one place."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        settings = extra.setdefault("obj", Settings())
        if os.environ.get(DEBUG_ENV):
            settings.debug = True
        try:
            code = super().main(args=args, prog_name=PROG_NAME, complete_var=complete_var,
                                standalone_mode=False, **extra)
            code = code if isinstance(code, int) else 0
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)  # silence the flush at exit
            os.dup2(devnull, sys.stdout.fileno())
            code = ExitCode.ERROR
        # the one place every failure becomes `error: ...` and an exit status
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001
            code = report_error(exc, bool(getattr(settings, "debug", False)))
        if not standalone_mode:
            return code
        sys.exit(code)


# -- signals: Ctrl-C and SIGTERM end a command the same way ----------------------------------------
@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM behaves like Ctrl-C (KeyboardInterrupt), so what the command
    made (a placeholder pod) is cleaned up; the exit status is then 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Cleanup finishes even if the user presses Ctrl-C again (the shield of operations)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- global flags, accepted before and after the command ---------------------------------------
def _store(attribute: str, convert: Callable[[Any], Any] = lambda v: v) -> Callable[..., None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        settings = ctx.ensure_object(Settings)
        source = ctx.get_parameter_source(param.name or attribute)
        if ctx.parent is not None and source in (ParameterSource.DEFAULT, None):
            return  # not given after the command: keep what the group saw
        if value is None or (value is False and source is ParameterSource.DEFAULT):
            return
        try:
            setattr(settings, attribute, convert(value))
        except UsageError as exc:
            raise click.BadParameter(exc.message, ctx=ctx, param=param) from None
    return callback


def _timeout_value(text: str) -> float | None:
    seconds = parse_duration(text)
    return seconds or None


GLOBAL_OPTIONS = [
    click.Option(["--kubeconfig"], metavar="PATH", expose_value=False,
                 callback=_store("kubeconfig"),
                 help="Path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)."),
    click.Option(["--context"], metavar="NAME", expose_value=False, callback=_store("context"),
                 help="The kubeconfig context to use."),
    click.Option(["-n", "--namespace"], metavar="NAMESPACE", expose_value=False,
                 callback=_store("namespace"),
                 help="Namespace (default: the context's namespace, else default)."),
    click.Option(["--request-timeout"], metavar="DURATION", expose_value=False,
                 callback=_store("request_timeout", _timeout_value),
                 help="Limit for each request to the cluster, e.g. 30s or 2m (0: none)."),
    click.Option(["-o", "--output"], type=click.Choice(OUTPUT_FORMATS), expose_value=False,
                 callback=_store("output"), help="Output format (default: table)."),
    click.Option(["--debug"], is_flag=True, default=False, expose_value=False,
                 callback=_store("debug"), help="Log requests and show tracebacks."),
]


def global_options(command: click.Command) -> click.Command:
    names = {p.name for p in command.params}
    for option in GLOBAL_OPTIONS:
        if option.name not in names:
            command.params.append(option)
    return command


CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"],
                                    "max_content_width": 100}


@click.group(cls=CedanaGroup, context_settings=CONTEXT_SETTINGS)
def main() -> None:
    """Checkpoint and restore containers of Kubernetes pods with CRIU.

    \b
    Examples:
      kubectl cedana install                       # the node helper on every node
      kubectl cedana list                          # containers the helpers see
      kubectl cedana checkpoint counter            # prints the checkpoint ID
      kubectl cedana restore ID --new-pod copy     # a new pod continuing from it
      kubectl cedana migrate counter --delete-source

    Global flags can be given before or after the command.
    """


global_options(main)


CommandDecorator = Callable[[Callable[..., Any]], click.Command]


def subcommands_of(group: click.Group) -> Callable[..., CommandDecorator]:
    """The decorator factory for `group`'s commands: each also takes the global flags."""
    def command(name: str, **kwargs: Any) -> CommandDecorator:
        def decorate(fn: Callable[..., Any]) -> click.Command:
            cmd = group.command(name, context_settings=CONTEXT_SETTINGS, **kwargs)(fn)
            return global_options(cmd)
        return decorate
    return command


command = subcommands_of(main)


# -- helpers for commands ---------------------------------------------------------------------
def connect(settings: Settings) -> KubeClient:
    return KubeClient(settings)  # the Kubernetes client is imported here, not before


def progress(settings: Settings, text: str = "") -> Progress:
    """A spinner on a terminal (not with --debug, whose lines it would garble)."""
    return Progress(text, enabled=False if settings.debug else None)


def emit(settings: Settings, doc: dict[str, Any], text: Callable[[], str]) -> None:
    if settings.structured:
        echo(render_structured(doc, settings.output))
    else:
        rendered = text()
        if rendered:
            echo(rendered)


def warn(message: str) -> None:
    stderr_line(f"warning: {message}")


def raise_partial(errors: list[CedanaError]) -> None:
    """After printing what could be gathered, fail for the helpers that did not answer."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise HelperFailure(f"{len(errors)} helpers failed: "
                          + "; ".join(e.one_line() for e in errors))


def list_from_helpers(settings: Settings, all_namespaces: bool,
                      gather: Callable[[KubeClient, str | None],
                                       tuple[list[dict[str, Any]], list[CedanaError]]],
                      kind: str, columns: list[Column], what: str) -> None:
    """`list` and `checkpoints ls`: what the helpers answered, then fail for those that did
    not."""
    kube = connect(settings)
    namespace = None if all_namespaces else kube.namespace
    with progress(settings, "asking the node helpers"):
        rows, errors = gather(kube, namespace)
    if all_namespaces:
        columns = [Column("NAMESPACE", "namespace"), *columns]
    if rows or settings.structured:
        emit(settings, document(kind, items=rows),
             lambda: render_table(rows, columns, wide=settings.output == "wide"))
    elif not errors:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        stderr_line(f"No {what} found in {where}.")
    raise_partial(errors)


def short_id(container_id: Any) -> str:
    return str(container_id or "")[:13]


def duration_timeout(text: str, flag: str) -> float:
    try:
        return parse_duration(text) or 365 * 86400.0
    except UsageError as exc:
        raise click.BadParameter(exc.message, param_hint=flag) from None


TIMEOUT_OPTION = click.option("--timeout", default="2m", show_default=True, metavar="DURATION",
                              help="How long to wait for the new pod to run.")


# -- list -------------------------------------------------------------------------------------
CONTAINER_COLUMNS = [
    Column("POD", "pod"), Column("CONTAINER", "container"), Column("NODE", "node"),
    Column("STATUS", "status"), Column("PID", "pid", wide=True),
    Column("CONTAINER-ID", lambda r: short_id(r.get("container_id")), wide=True),
    Column("IMAGE", "image", wide=True),
]


@command("list", short_help="List the containers the node helpers see.")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.pass_obj
def list_command(settings: Settings, all_namespaces: bool) -> None:
    """List the containers the node helpers see, with their pod, node and status."""
    list_from_helpers(settings, all_namespaces, operations.list_containers, "ContainerList",
                      CONTAINER_COLUMNS, "containers")


# -- checkpoint -------------------------------------------------------------------------------
COMPRESSION_OPTION = click.option(
    "--compression", type=click.Choice(COMPRESSIONS),
    help="Compression of a checkpoint pushed to the registry (default: the helper's, "
         f"{DEFAULT_COMPRESSION}).")
WITH_ROOTFS_OPTION = click.option(
    "--with-rootfs/--without-rootfs", default=True, show_default=True,
    help="Store the container's changed files with its memory (same freeze) and put them "
         "back before a restore. Without them a process holding a file it created cannot be "
         "restored.")

@command("checkpoint", short_help="Checkpoint a pod's container; prints the checkpoint ID.")
@click.argument("pod")
@click.option("-c", "--container", metavar="NAME",
              help="The container (required when the pod has several).")
@click.option("--leave-running", is_flag=True,
              help="Keep the container running after the checkpoint (default: it stops).")
@click.option("--path", default="", metavar="DIR",
              help="Directory on the node for the checkpoint, inside the helper's "
                   "checkpoint directory (default: a new one there).")
@WITH_ROOTFS_OPTION
@click.option("--storage", type=click.Choice(["local", "remote"]),
              help="remote: push to the helpers' checkpoint registry (restorable on any node); "
                   "default: remote when the helper has a registry and no --path is given.")
@COMPRESSION_OPTION
@click.pass_obj
def checkpoint_command(settings: Settings, pod: str, container: str | None,
                       leave_running: bool, path: str, with_rootfs: bool, storage: str | None,
                       compression: str | None) -> None:
    """Checkpoint a container of POD with CRIU and print the checkpoint ID.

    \b
    Examples:
      kubectl cedana checkpoint counter
      kubectl cedana checkpoint web -c app --leave-running
      ID=$(kubectl cedana checkpoint counter -n demo)
    """
    kube = connect(settings)
    with progress(settings, f"checkpointing {pod}"):
        result = operations.checkpoint_pod(kube, kube.namespace, pod, container,
                                           leave_running=leave_running, path=path,
                                           with_rootfs=with_rootfs, storage=storage,
                                           compression=compression)

    def text() -> str:
        if settings.output != "wide":
            return str(result["checkpoint_id"])
        row = dict(result["source"], **result)
        return render_table([row], [
            Column("CHECKPOINT", "checkpoint_id"), Column("POD", "pod"),
            Column("CONTAINER", "container"), Column("NODE", "node"),
            Column("SIZE", lambda r: human_size(r.get("size_bytes"))),
            Column("DURATION", lambda r: f"{r.get('duration_ms')}ms"),
            Column("PATH", "checkpoint_path")], wide=True)
    emit(settings, document("Checkpoint", **result), text)


# -- restore ----------------------------------------------------------------------------------
@command("restore", short_help="Restore a checkpoint into a sleeping pod or a new one.")
@click.argument("checkpoint")
@click.option("--into", metavar="POD", help="An existing pod whose container only sleeps.")
@click.option("-c", "--container", metavar="NAME", help="The container of --into POD.")
@click.option("--new-pod", metavar="NAME",
              help="Create this pod from the checkpoint's source pod and restore into it.")
@click.option("--node", metavar="NODE", help="With --new-pod: the node (default: the "
                                             "checkpoint's).")
@TIMEOUT_OPTION
@click.pass_obj
def restore_command(settings: Settings, checkpoint: str, into: str | None,
                    container: str | None, new_pod: str | None, node: str | None,
                    timeout: str) -> None:
    """Restore CHECKPOINT (an ID, a unique ID prefix, or a path on the node).

    With --into POD the process tree is restored into POD's container, which must run
    a command that only sleeps. With --new-pod NAME the plugin builds that pod from the
    checkpoint's source pod (same image, env, volumes, resources; command replaced by a
    sleep loop run by /bin/sh; no probes), pins it to the checkpoint's node, waits for it to
    run and restores into it. Ctrl-C or SIGTERM meanwhile delete the new pod (exit 130).

    \b
    Examples:
      kubectl cedana restore 6f1d2c3b --new-pod counter-copy
      kubectl cedana restore 6f1d2c3b --into sleeper -c app
    """
    if bool(into) == bool(new_pod):
        raise click.UsageError("give exactly one of --into POD or --new-pod NAME")
    if container and not into:
        raise click.UsageError("-c/--container goes with --into (a new pod takes the "
                               "checkpoint's container name)")
    if node and not new_pod:
        raise click.UsageError("--node goes with --new-pod")
    wait_limit = duration_timeout(timeout, "--timeout")
    kube = connect(settings)
    with progress(settings, "restoring") as spinner, sigterm_interrupts():
        if into:
            result = operations.restore_into_pod(kube, checkpoint, kube.namespace, into, container)
        else:
            assert new_pod is not None
            result = operations.restore_new_pod(kube, checkpoint, new_pod, node=node,
                                                namespace=settings.namespace,
                                                timeout=wait_limit, progress=spinner.update,
                                                shield=signals_held)
    target = result["target"]
    emit(settings, document("Restore", **result), lambda: (
        f"restored checkpoint {result['checkpoint_id']} into pod "
        f"{target['namespace']}/{target['pod']} (container {target['container']}, node "
        f"{target['node']}, pid {result.get('pid')}) in {result.get('duration_ms')} ms"))


# -- migrate ----------------------------------------------------------------------------------
@command("migrate", short_help="Move a pod's container into a new pod (checkpoint + restore).")
@click.argument("pod")
@click.option("-c", "--container", metavar="NAME", help="The container (if several).")
@click.option("--to-node", metavar="NODE",
              help="Target node (default: the pod's own); another node goes through the "
                   "helpers' checkpoint registry.")
@click.option("--delete-source", is_flag=True,
              help="Stop the container at the checkpoint and delete POD after the restore.")
@click.option("--new-pod", metavar="NAME", help="Name of the new pod (default: POD-migrated).")
@WITH_ROOTFS_OPTION
@COMPRESSION_OPTION
@TIMEOUT_OPTION
@click.pass_obj
def migrate_command(settings: Settings, pod: str, container: str | None,
                    to_node: str | None, delete_source: bool, new_pod: str | None,
                    with_rootfs: bool, compression: str | None, timeout: str) -> None:
    """Checkpoint POD's container, restore it into a new pod, and print the pause.

    The new pod is created and running before the checkpoint is taken, so the measured
    pause (checkpoint request sent -> restore answered) is only the dump and the restore.
    Without --delete-source the source keeps running and the new pod is a copy.
    """
    wait_limit = duration_timeout(timeout, "--timeout")
    kube = connect(settings)
    with progress(settings, f"migrating {pod}") as spinner, sigterm_interrupts():
        result = operations.migrate_pod(kube, kube.namespace, pod, container, to_node=to_node,
                                        delete_source=delete_source, new_pod=new_pod,
                                        timeout=wait_limit, progress=spinner.update,
                                        with_rootfs=with_rootfs, compression=compression,
                                        shield=signals_held)
    for message in result["warnings"]:
        warn(message)
    source, target = result["source"], result["target"]
    emit(settings, document("Migration", **result), lambda: (
        f"migrated {source['namespace']}/{source['pod']} (container {source['container']}) "
        f"to pod {target['pod']} on node {target['node']}\n"
        f"checkpoint {result['checkpoint_id']}: pause {result['pause_ms']} ms "
        f"(checkpoint {result.get('checkpoint_ms')} ms, restore {result.get('restore_ms')} ms)"
        + (f"; moved {human_size(result['bytes_moved'])} ({result['compression']}) through "
           f"{result['remote']}" if result.get("bytes_moved") else "")
        + (f"; deleted pod {source['pod']}" if result["source_deleted"] else "")))


# -- checkpoints ------------------------------------------------------------------------------
CHECKPOINT_COLUMNS = [
    Column("ID", "id"), Column("POD", "pod"), Column("CONTAINER", "container"),
    Column("NODE", "node"), Column("SIZE", lambda r: human_size(r.get("size_bytes"))),
    Column("COMPRESSION", lambda r: r.get("compression") or "none"),
    Column("AGE", lambda r: human_age(r.get("created"))), Column("WHERE", "where"),
    Column("PATH", "path", wide=True),
    Column("REMOTE", lambda r: (r.get("remote") or {}).get("reference", ""), wide=True),
]


@main.group("checkpoints", invoke_without_command=True, context_settings=CONTEXT_SETTINGS,
            short_help="The checkpoints stored on the nodes: ls, inspect, rm.")
@click.option("-A", "--all-namespaces", is_flag=True, help="With no subcommand: ls -A.")
@click.pass_context
def checkpoints_group(ctx: click.Context, all_namespaces: bool) -> None:
    """The checkpoints stored on the nodes (default: ls)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(checkpoints_ls, all_namespaces=all_namespaces)


global_options(checkpoints_group)


checkpoints_command = subcommands_of(checkpoints_group)


@checkpoints_command("ls")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.pass_obj
def checkpoints_ls(settings: Settings, all_namespaces: bool) -> None:
    """List checkpoints of the namespace's pods (every namespace with -A)."""
    list_from_helpers(settings, all_namespaces, operations.list_checkpoints, "CheckpointList",
                      CHECKPOINT_COLUMNS, "checkpoints")


@checkpoints_command("inspect")
@click.argument("checkpoint")
@click.pass_obj
def checkpoints_inspect(settings: Settings, checkpoint: str) -> None:
    """Everything the node knows about CHECKPOINT (ID or unique prefix)."""
    kube = connect(settings)
    entry = operations.inspect_checkpoint(kube, checkpoint)
    emit(settings, document("Checkpoint", **entry), lambda: to_yaml(entry).rstrip("\n"))


@checkpoints_command("rm")
@click.argument("checkpoints", nargs=-1, required=True)
@click.pass_obj
def checkpoints_rm(settings: Settings, checkpoints: Sequence[str]) -> None:
    """Delete CHECKPOINT(s) from the node that stores them."""
    kube = connect(settings)
    deleted = [operations.delete_checkpoint(kube, wanted) for wanted in checkpoints]
    emit(settings, document("CheckpointDeletion", items=deleted),
         lambda: "\n".join(f'checkpoint "{d["id"]}" deleted'
                           + (" (and its registry image)" if d.get("removed_remote") else "")
                           for d in deleted))


@checkpoints_command("prune")
@click.option("--keep", type=click.IntRange(0), metavar="N",
              help="Keep the newest N per container (default: each helper's configured limit).")
@click.option("--max-bytes", type=click.IntRange(0), metavar="BYTES",
              help="Keep each node's checkpoints within BYTES, oldest go first.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.pass_obj
def checkpoints_prune(settings: Settings, keep: int | None, max_bytes: int | None,
                      dry_run: bool) -> None:
    """Apply the retention policy now: oldest checkpoints first, local files and registry
    images."""
    kube = connect(settings)
    with progress(settings, "pruning"):
        rows, errors = operations.prune_checkpoints(kube, keep=keep, max_bytes=max_bytes,
                                                    dry_run=dry_run)
    emit(settings, document("CheckpointPrune", items=rows, dry_run=dry_run), lambda: "\n".join(
        f'checkpoint "{r["id"]}" ({r.get("pod")}/{r.get("container")}, node {r["node"]}) '
        + ("would be deleted" if dry_run else "deleted") for r in rows) or "nothing to prune")
    raise_partial(errors)


# -- version ----------------------------------------------------------------------------------
@command("version", short_help="Versions of the plugin and of each node's helper, runc, CRIU.")
@click.option("--client", is_flag=True, help="Only the plugin (no cluster access).")
@click.pass_obj
def version_command(settings: Settings, client: bool) -> None:
    """The plugin's version and, per node, the helper's, runc's and CRIU's."""
    client_info = {"version": __version__, "python": platform.python_version()}
    client_line = f"Client Version: kubectl-cedana {__version__}"
    if client:
        emit(settings, document("Version", client=client_info), lambda: client_line)
        return
    kube = connect(settings)
    try:
        rows, errors = operations.helper_versions(kube)
    except HelperNotInstalled:
        emit(settings, document("Version", client=client_info, nodes=[]), lambda: client_line)
        raise
    columns = [Column("NODE", "node"), Column("HELPER", "helper"), Column("RUNC", "runc"),
               Column("CRIU", "criu"), Column("POD", "pod", wide=True)]
    emit(settings, document("Version", client=client_info, nodes=rows),
         lambda: client_line + "\n" + render_table(rows, columns,
                                                   wide=settings.output == "wide").rstrip("\n"))
    raise_partial(errors)


# -- doctor -----------------------------------------------------------------------------------
@command("doctor", short_help="Check helpers, CRIU and your permissions.")
@click.pass_obj
def doctor_command(settings: Settings) -> None:
    """Check that every node has a ready helper with CRIU, and that your kubeconfig user has
    the permissions the commands need (by SelfSubjectAccessReview)."""
    from kubectl_cedana.doctor import FAIL, run_doctor

    kube = connect(settings)
    with progress(settings, "checking"):
        rows = run_doctor(kube)
    failed = [r for r in rows if r["result"] == FAIL]
    columns = [Column("CHECK", "check"), Column("SCOPE", "scope"), Column("RESULT", "result"),
               Column("DETAIL", "detail")]
    emit(settings, document("DoctorReport", ok=not failed, checks=rows),
         lambda: render_table(rows, columns).rstrip("\n"))
    if failed:
        raise CedanaError(f"{len(failed)} check(s) failed")


# -- install / uninstall ----------------------------------------------------------------------
def _object_lines(results: list[dict[str, Any]], dry_run: str = "") -> str:
    lines = []
    for result in results:
        notes = [n for n in (dry_run, result.get("note")) if n]
        lines.append(f"{result['object']} {result['action']}"
                     + (f" ({'; '.join(notes)})" if notes else ""))
    return "\n".join(lines)


@command("install", short_help="Install the node helper DaemonSet (deploy/base).")
@click.option("--runtime", type=click.Choice(["containerd", "k3s", "crio"]),
              default="containerd", show_default=True,
              help="The nodes' container runtime: the helper's runc root and host paths come "
                   "from deploy/overlays/RUNTIME.")
@click.option("--image", metavar="IMAGE", help="Helper image (default: the manifests' image, "
                                               "docker.io/cedana/helper:<plugin version>).")
@click.option("--dry-run", type=click.Choice(["none", "client", "server"]), default="none",
              is_flag=False, flag_value="client", show_default=True,
              help="--dry-run (=client): only print the objects (all of them with -o "
                   "yaml|json); =server: the API server validates them and persists nothing.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the helper is ready on every node.")
@click.option("--timeout", default="5m", show_default=True, metavar="DURATION",
              help="How long to wait for readiness.")
@click.option("--checkpoint-repository", metavar="REGISTRY/REPO",
              help="Registry repository for remote checkpoints (needed by migrate --to-node); "
                   "the helpers push with their node's credentials.")
@click.option("--compression", type=click.Choice(COMPRESSIONS),
              help="Default compression of remote checkpoints (helper default: "
                   f"{DEFAULT_COMPRESSION}).")
@click.option("--max-checkpoints-per-container", type=click.IntRange(0), metavar="N",
              help="Retention: keep at most N checkpoints per container (0: all).")
@click.option("--max-total-bytes", type=click.IntRange(0), metavar="BYTES",
              help="Retention: at most BYTES of checkpoints on each node (0: no limit).")
@click.pass_obj
def install_command(settings: Settings, runtime: str, image: str | None, dry_run: str,
                    wait: bool, timeout: str, checkpoint_repository: str | None,
                    compression: str | None, max_checkpoints_per_container: int | None,
                    max_total_bytes: int | None) -> None:
    """Create or update the helper's Namespace, ServiceAccount, RBAC and DaemonSet, the
    same objects `kubectl apply -k deploy/` creates, then wait until it is ready."""
    from kubectl_cedana import install

    limit = duration_timeout(timeout, "--timeout")
    helper_args: list[str] = []
    for flag, value in (("--checkpoint-repository", checkpoint_repository),
                        ("--compression", compression),
                        ("--max-checkpoints-per-container", max_checkpoints_per_container),
                        ("--max-total-bytes", max_total_bytes)):
        if value is not None:
            helper_args += [flag, str(value)]
    objects = install.render_manifests(image, runtime=runtime, helper_args=helper_args)
    if dry_run == "client":
        if settings.output == "yaml":
            echo(to_yaml_stream(objects))
        elif settings.output == "json":
            echo(to_json({"apiVersion": "v1", "kind": "List", "items": objects}))
        else:
            echo("\n".join(f"{install.display_name(o)} created (dry run)" for o in objects))
            echo(f"secret/{install.SIGNING_SECRET} created unless it exists (dry run; random "
                 "bytes, made by install only, never printed)")
        return
    kube = connect(settings)
    with progress(settings, "installing") as spinner:
        results = install.apply_manifests(kube, objects, server_dry_run=dry_run == "server",
                                          timeout=limit, progress=spinner.update)
        ready: dict[str, int] | None = None
        if wait and dry_run == "none":
            for daemonset in install.helper_daemonsets(objects):
                meta = daemonset["metadata"]
                ready = install.wait_daemonset_ready(kube, meta["namespace"], meta["name"],
                                                     limit, spinner.update)
    used_image = image or install.default_image(objects)
    def text() -> str:
        lines = _object_lines(results, "server dry run" if dry_run == "server" else "")
        if ready is not None:
            lines += f"\nhelper ready on {ready['ready']}/{ready['desired']} nodes"
        return lines
    emit(settings, document("Install", image=used_image, runtime=runtime,
                            dry_run=dry_run != "none",
                            objects=results, ready=ready), text)


@command("uninstall", short_help="Remove everything `install` created.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the objects and helper pods are gone.")
@click.option("--timeout", default="5m", show_default=True, metavar="DURATION")
@click.pass_obj
def uninstall_command(settings: Settings, dry_run: bool, wait: bool, timeout: str) -> None:
    """Delete every object labelled app.kubernetes.io/part-of=kubectl-cedana and wait until
    it is gone. Checkpoints stay on the nodes' disks (/var/lib/cedana/checkpoints)."""
    from kubectl_cedana import install

    limit = duration_timeout(timeout, "--timeout")
    kube = connect(settings)
    with progress(settings, "uninstalling") as spinner:
        results = install.uninstall(kube, dry_run=dry_run, wait=wait, timeout=limit,
                                    progress=spinner.update)
    emit(settings, document("Uninstall", dry_run=dry_run, objects=results),
         lambda: _object_lines(results, "dry run" if dry_run else "") if results else
         f"nothing to uninstall (no objects labelled {install.PART_OF_SELECTOR})")


# -- rootfs -----------------------------------------------------------------------------------
@main.group("rootfs", context_settings=CONTEXT_SETTINGS,
            short_help="Commit a container's changed files to an image, or apply one.")
def rootfs_group() -> None:
    """A container's changed files as an image layer in a registry.

    \b
    rootfs checkpoint: the container's image plus one layer holding what it created, changed
                       and deleted, pushed with the node's own registry credentials.
    rootfs restore:    the layers an image adds over a pod's image, applied onto its
                       (sleeping) container's files, deletions included.
    """


global_options(rootfs_group)


rootfs_command = subcommands_of(rootfs_group)


@rootfs_command("checkpoint", short_help="Push a container's image plus its changed files.")
@click.argument("pod")
@click.option("-c", "--container", metavar="NAME", help="The container (if several).")
@click.option("--image", required=True, metavar="REF",
              help="Where to push, e.g. registry.example.com/team/app:snap1.")
@click.pass_obj
def rootfs_checkpoint(settings: Settings, pod: str, container: str | None, image: str) -> None:
    """Commit POD's container's changed files as one layer on its image and push it as REF.

    The container is frozen while its files are read and keeps running. The node's helper
    pushes with the node's registry credentials (docker config, containerd's registry
    configuration). Prints the pushed reference with its digest.

    \b
    Examples:
      kubectl cedana rootfs checkpoint web --image registry.example.com/web:snap1
      kubectl run web2 --image registry.example.com/web:snap1
    """
    kube = connect(settings)
    with progress(settings, f"committing {pod}"):
        result = operations.rootfs_checkpoint(kube, kube.namespace, pod, container, image)
    emit(settings, document("RootfsCheckpoint", **result), lambda: str(result["pushed"]))


@rootfs_command("restore", short_help="Apply an image's added layers onto a pod's files.")
@click.option("--into", "into", required=True, metavar="POD",
              help="The pod whose container receives the files (usually a sleeping one).")
@click.option("-c", "--container", metavar="NAME", help="The container of POD (if several).")
@click.option("--image", required=True, metavar="REF",
              help="An image made by `rootfs checkpoint` from the same base image.")
@click.pass_obj
def rootfs_restore(settings: Settings, into: str, container: str | None, image: str) -> None:
    """Apply the layers REF adds over POD's own image onto POD's container files.

    \b
    Example:
      kubectl cedana rootfs restore --into sleeper --image registry.example.com/web:snap1
    """
    kube = connect(settings)
    with progress(settings, f"applying {image} to {into}"):
        result = operations.rootfs_restore(kube, kube.namespace, into, container, image)
    target = result["target"]
    emit(settings, document("RootfsRestore", **result), lambda: (
        f"applied {len(result['applied_layers'])} layer(s) of {result['image']} to pod "
        f"{target['namespace']}/{target['pod']} (container {target['container']}): "
        f"{result['entries']} entries written, {len(result['deleted'])} deleted"))


if __name__ == "__main__":
    main()
