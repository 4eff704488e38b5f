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
from kubectl_cedana.contract import (
    CHECKPOINT_RESOURCE,
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    GROUP_VERSION,
    is_checkpoint_id,
)
from kubectl_cedana.errors import (
    CedanaError,
    ExitCode,
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
            criu_log = body.get("criuLog") if isinstance(body, dict) else None
            shown = {k: v for k, v in body.items() if k != "criuLog"} \
                if isinstance(body, dict) else body
            stderr_line(f"debug: status {shown}")
            if criu_log:
                where = body.get("criuLogPath") or "the helper's checkpoint directory"
                stderr_line(f"debug: the end of CRIU's log ({where} on node "
                            f"{body.get('node') or '?'}):")
                for line in str(criu_log).splitlines():
                    stderr_line(f"debug:   {line}")
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
    """Within the block SIGTERM behaves like Ctrl-C (KeyboardInterrupt): a command waiting for
    an object says what goes on without it; the exit status is then 130."""
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
      kubectl cedana install                       # the API and the node helper on every node
      kubectl cedana list                          # the namespace's containers
      kubectl cedana checkpoint counter            # prints the checkpoint ID
      kubectl cedana restore ID --new-pod copy     # a new pod continuing from it
      kubectl cedana migrate counter --delete-source
      kubectl get checkpoints -w                   # the same objects, without the plugin

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


def emit(settings: Settings, doc: Any, text: Callable[[], str]) -> None:
    if settings.structured:
        echo(render_structured(doc, settings.output))
    else:
        rendered = text()
        if rendered:
            echo(rendered)


def warn(message: str) -> None:
    stderr_line(f"warning: {message}")


def short_id(container_id: Any) -> str:
    return str(container_id or "")[:13]


def duration_timeout(text: str, flag: str) -> float:
    try:
        return parse_duration(text) or 365 * 86400.0
    except UsageError as exc:
        raise click.BadParameter(exc.message, param_hint=flag) from None


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def ms(value: Any) -> str:
    return f"{value} ms" if value is not None else "? ms"


DRY_RUN_OPTION = click.option(
    "--dry-run", type=click.Choice(["none", "client", "server"]), default="none",
    is_flag=False, flag_value="client", show_default=True,
    help="--dry-run (=client): print the object instead of creating it (the object itself "
         "with -o yaml|json); =server: the API server validates and admits it, stores nothing.")
NAME_OPTION = click.option("--name", metavar="NAME",
                           help="The object's name (default: generated from the pod's).")
WAIT_OPTION = click.option(
    "--wait/--no-wait", default=True, show_default=True,
    help="Watch the object until the helper has finished it; --no-wait prints its name and "
         "returns at once (follow it with kubectl get ... -w).")
WAIT_TIMEOUT_OPTION = click.option(
    "--timeout", default="1h", show_default=True, metavar="DURATION",
    help="How long to wait (exit 124 after; the helper goes on).")


def start_and_finish(settings: Settings, kube: KubeClient,
                     start: Callable[[], operations.Started], *,
                     wait: bool, timeout: float, label: str,
                     text: Callable[[dict[str, Any]], str]) -> None:
    """Create one cedana.io object, then, with `wait`, watch it to its end; print it."""
    from kubectl_cedana.resources import display

    with progress(settings, label) as spinner, sigterm_interrupts():
        started = start()
        final: dict[str, Any] | None = None
        if started.dry_run == "none" and wait:
            spinner.update(f"{started.resource.singular} {started.obj['metadata']['name']} "
                           "created")
            final = operations.wait_for(kube, started, timeout=timeout,
                                        progress=spinner.update)
    for message in started.warnings:
        warn(message)
    if started.dry_run != "none":
        note = "server dry run" if started.dry_run == "server" else "dry run"
        emit(settings, started.obj,
             lambda: f"{display(started.resource, started.obj)} created ({note})")
    elif final is None:  # --no-wait
        emit(settings, started.obj, lambda: str(started.obj["metadata"]["name"]))
    else:
        done = final
        emit(settings, done, lambda: text(done))


# -- list -------------------------------------------------------------------------------------
CONTAINER_COLUMNS = [
    Column("POD", "pod"), Column("CONTAINER", "container"), Column("NODE", "node"),
    Column("STATUS", "status"), Column("REASON", "reason", wide=True),
    Column("RESTARTS", "restarts", wide=True),
    Column("CONTAINER-ID", lambda r: short_id(r.get("container_id")), wide=True),
    Column("IMAGE", "image", wide=True),
]


@command("list", short_help="List the containers of the namespace's pods.")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.pass_obj
def list_command(settings: Settings, all_namespaces: bool) -> None:
    """List the containers of the namespace's pods (every namespace with -A), with their
    node, state and runtime ID, as the API server knows them."""
    kube = connect(settings)
    namespace = None if all_namespaces else kube.namespace
    rows = operations.list_containers(kube, namespace)
    columns = [Column("NAMESPACE", "namespace"), *CONTAINER_COLUMNS] if all_namespaces \
        else CONTAINER_COLUMNS
    if rows or settings.structured:
        emit(settings, document("ContainerList", items=rows),
             lambda: render_table(rows, columns, wide=settings.output == "wide"))
    else:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        stderr_line(f"No containers found in {where}.")


# -- checkpoint -------------------------------------------------------------------------------
STORAGE_OPTION = click.option(
    "--storage", type=click.Choice(["local", "remote"]),
    help="remote: also push it to the helpers' checkpoint registry (restorable on any node); "
         "default: remote when the helpers have a registry.")
COMPRESSION_OPTION = click.option(
    "--compression", type=click.Choice(COMPRESSIONS),
    help="Compression of a checkpoint pushed to the registry (default: the helper's, "
         f"{DEFAULT_COMPRESSION}).")
WITH_ROOTFS_OPTION = click.option(
    "--with-rootfs/--without-rootfs", default=True, show_default=True,
    help="Store the container's changed files with its memory (same freeze) and put them "
         "back before a restore. Without them a process holding a file it created cannot be "
         "restored.")


def checkpoint_text(settings: Settings, obj: dict[str, Any]) -> str:
    status = status_of(obj)
    if settings.output != "wide":
        return str(status.get("checkpointID") or "")
    row = operations.checkpoint_row(obj)
    row["duration_ms"] = status.get("durationMs")
    return render_table([row], [
        Column("CHECKPOINT", "checkpoint_id"), Column("NAME", "name"), Column("POD", "pod"),
        Column("CONTAINER", "container"), Column("NODE", "node"),
        Column("SIZE", lambda r: human_size(r.get("size_bytes"))),
        Column("DURATION", lambda r: ms(r.get("duration_ms")).replace(" ", "")),
        Column("STORAGE", "storage")], wide=True)


@command("checkpoint", short_help="Checkpoint a pod's container; prints the checkpoint ID.")
@click.argument("pod")
@click.option("-c", "--container", metavar="NAME",
              help="One container (default: every container of the pod, native sidecars "
                   "included, in one freeze).")
@click.option("--leave-running", is_flag=True,
              help="Keep the container running after the checkpoint (default: it stops).")
@click.option("--hold-connections", is_flag=True,
              help="Stop the container with its TCP connections held open for a restore into "
                   "the same pod (restore --into POD), which takes them over: its clients see "
                   "a pause, not a reset. One container; not with --leave-running.")
@WITH_ROOTFS_OPTION
@STORAGE_OPTION
@COMPRESSION_OPTION
@NAME_OPTION
@WAIT_OPTION
@WAIT_TIMEOUT_OPTION
@DRY_RUN_OPTION
@click.pass_obj
def checkpoint_command(settings: Settings, pod: str, container: str | None,
                       leave_running: bool, hold_connections: bool, with_rootfs: bool,
                       storage: str | None, compression: str | None, name: str | None,
                       wait: bool, timeout: str, dry_run: str) -> None:
    """Checkpoint a container of POD with CRIU and print the checkpoint ID.

    Creates a Checkpoint object (cedana.io/v1alpha1) that the cedana helper on POD's node
    carries out, and watches it: the phase and progress on a terminal, nothing when piped.
    -o json|yaml prints the object.

    \b
    Examples:
      kubectl cedana checkpoint counter
      kubectl cedana checkpoint web -c app --leave-running
      kubectl cedana checkpoint web -c app --hold-connections   # then: restore --into web
      ID=$(kubectl cedana checkpoint counter -n demo)
      kubectl cedana checkpoint counter --no-wait     # prints the Checkpoint's name
    """
    limit = duration_timeout(timeout, "--timeout")
    if hold_connections and leave_running:
        raise click.UsageError("--hold-connections stops the container: drop --leave-running")
    kube = connect(settings)
    start_and_finish(
        settings, kube, lambda: operations.start_checkpoint(
            kube, kube.namespace, pod, container, leave_running=leave_running,
            hold_connections=hold_connections, with_rootfs=with_rootfs, storage=storage,
            compression=compression, name=name or "", dry_run=dry_run),
        wait=wait, timeout=limit, label=f"checkpointing {pod}",
        text=lambda obj: checkpoint_text(settings, obj))


# -- restore ----------------------------------------------------------------------------------
def restore_text(obj: dict[str, Any]) -> str:
    status = status_of(obj)
    return (f"restored checkpoint {status.get('checkpointID')} into pod "
            f"{obj['metadata']['namespace']}/{status.get('podName')} (container "
            f"{status.get('container')}, node {status.get('node')}, pid {status.get('pid')}) "
            f"in {ms(status.get('durationMs'))}")


@command("restore", short_help="Restore a checkpoint into a sleeping pod or a new one.")
@click.argument("checkpoint")
@click.option("--into", metavar="POD", help="An existing pod whose container only sleeps.")
@click.option("-c", "--container", metavar="NAME", help="The container of --into POD.")
@click.option("--new-pod", metavar="NAME",
              help="A new pod the helper makes from the checkpointed pod's spec.")
@click.option("--node", metavar="NODE", help="With --new-pod: the node (default: the "
                                             "checkpoint's).")
@click.option("--checkpoint-namespace", metavar="NS",
              help="The namespace the checkpoint was taken in (default: -n's); you need get "
                   "on its checkpoints there.")
@NAME_OPTION
@WAIT_OPTION
@WAIT_TIMEOUT_OPTION
@DRY_RUN_OPTION
@click.pass_obj
def restore_command(settings: Settings, checkpoint: str, into: str | None,
                    container: str | None, new_pod: str | None, node: str | None,
                    checkpoint_namespace: str | None, name: str | None, wait: bool,
                    timeout: str, dry_run: str) -> None:
    """Restore CHECKPOINT: a checkpoint ID (a UUID), or the name of a Checkpoint object.

    Creates a Restore object (cedana.io/v1alpha1) and watches it. With --into POD the
    process tree is restored into POD's container, which must run a command that only
    sleeps. With --new-pod NAME the helper makes that pod from the checkpointed pod's spec
    (same image, env, volumes, resources; a sleeping shell instead of its command; no
    probes), on the checkpoint's node or --node, and restores into it.

    \b
    Examples:
      kubectl cedana restore 6f1d2c3b-... --new-pod counter-copy
      kubectl cedana restore counter-x7k2p --into sleeper -c app
      kubectl cedana restore 6f1d2c3b-... --checkpoint-namespace team-a --new-pod copy
    """
    if bool(into) == bool(new_pod):
        raise click.UsageError("give exactly one of --into POD or --new-pod NAME")
    if container and not into:
        raise click.UsageError("-c/--container goes with --into (a new pod takes the "
                               "checkpoint's container name)")
    if node and not new_pod:
        raise click.UsageError("--node goes with --new-pod")
    limit = duration_timeout(timeout, "--timeout")
    kube = connect(settings)
    start_and_finish(
        settings, kube, lambda: operations.start_restore(
            kube, kube.namespace, checkpoint.lower() if _looks_like_id(checkpoint)
            else checkpoint, into=into, container=container, new_pod=new_pod, node=node,
            checkpoint_namespace=checkpoint_namespace, name=name or "", dry_run=dry_run),
        wait=wait, timeout=limit, label="restoring", text=restore_text)


def _looks_like_id(text: str) -> bool:
    return is_checkpoint_id(text.lower())


# -- migrate ----------------------------------------------------------------------------------
def migration_text(obj: dict[str, Any]) -> str:
    status, spec = status_of(obj), obj.get("spec") or {}
    namespace = obj["metadata"]["namespace"]
    return (f"migrated {namespace}/{spec.get('podName')} (container "
            f"{status.get('container') or spec.get('container')}) to pod {status.get('podName')}"
            f" on node {status.get('targetNode') or status.get('node')}\n"
            f"checkpoint {status.get('checkpointID')}: pause {ms(status.get('pauseMs'))} "
            f"(checkpoint {ms(status.get('checkpointMs'))}, "
            + (f"transfer {ms(status.get('transferMs'))} {status['transfer']}, "
               if status.get("transfer") else "")
            + f"restore {ms(status.get('restoreMs'))})"
            + (f"; post-copy: its memory followed in {ms(status.get('memoryMs'))}"
               if status.get("postCopy") else "")
            + (f"; deleted pod {spec.get('podName')}" if spec.get("deleteSource") else ""))


@command("migrate", short_help="Move a pod's container into a new pod (checkpoint + restore).")
@click.argument("pod")
@click.option("-c", "--container", metavar="NAME",
              help="One container (default: the whole pod, every container in one freeze).")
@click.option("--to-node", metavar="NODE",
              help="Target node (default: the pod's own); the checkpoint goes from helper to "
                   "helper (or through the checkpoint registry when that fails).")
@click.option("--delete-source", is_flag=True,
              help="Stop the container at the checkpoint and delete POD after the restore.")
@click.option("--new-pod", metavar="NAME", help="Name of the new pod (default: POD-migrated).")
@click.option("--lazy/--no-lazy", default=None,
              help="Post-copy: the container runs on the target node at once and its memory "
                   "follows, the source frozen until the last page arrived (one container, "
                   "another node). Default: post-copy for a container holding at least the "
                   "helper's --post-copy-above of memory (1 GiB).")
@NAME_OPTION
@WAIT_OPTION
@WAIT_TIMEOUT_OPTION
@DRY_RUN_OPTION
@click.pass_obj
def migrate_command(settings: Settings, pod: str, container: str | None,
                    to_node: str | None, delete_source: bool, new_pod: str | None,
                    lazy: bool | None, name: str | None, wait: bool, timeout: str,
                    dry_run: str) -> None:
    """Move POD's container into a new pod and print the pause the workload saw.

    Creates a Migration object (cedana.io/v1alpha1) that the helper of POD's node carries
    out: the new pod first (from POD's spec, sleeping), then the checkpoint, the restore
    into the new pod, and with --delete-source the deletion of POD. The pause (status.pauseMs)
    is measured by the helpers from the freeze of the source to the restored process running.
    Without --delete-source the source keeps running and the new pod is a copy.
    """
    limit = duration_timeout(timeout, "--timeout")
    kube = connect(settings)
    start_and_finish(
        settings, kube, lambda: operations.start_migration(
            kube, kube.namespace, pod, container, to_node=to_node, new_pod=new_pod,
            delete_source=delete_source, lazy=lazy, name=name or "", dry_run=dry_run),
        wait=wait, timeout=limit, label=f"migrating {pod}", text=migration_text)


# -- checkpoints ------------------------------------------------------------------------------
CHECKPOINT_COLUMNS = [
    Column("NAME", "name"), Column("POD", "pod"), Column("CONTAINER", "container"),
    Column("NODE", "node"), Column("PHASE", "phase"),
    Column("SIZE", lambda r: human_size(r.get("size_bytes"))),
    Column("ID", "checkpoint_id"), Column("AGE", lambda r: human_age(r.get("created"))),
    Column("STORAGE", "storage", wide=True), Column("COMPRESSION", "compression", wide=True),
    Column("REQUESTED-BY", "requested_by", wide=True), Column("REASON", "error_code", wide=True),
]


@main.group("checkpoints", invoke_without_command=True, context_settings=CONTEXT_SETTINGS,
            short_help="The Checkpoint objects: ls, inspect, rm, prune, import.")
@click.option("-A", "--all-namespaces", is_flag=True, help="With no subcommand: ls -A.")
@click.pass_context
def checkpoints_group(ctx: click.Context, all_namespaces: bool) -> None:
    """The namespace's Checkpoint objects (default: ls). Deleting one deletes its data on the
    node and in the registry (the helper of its node does it, then lets the object go)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(checkpoints_ls, all_namespaces=all_namespaces)


global_options(checkpoints_group)


checkpoints_command = subcommands_of(checkpoints_group)


@checkpoints_command("ls")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.pass_obj
def checkpoints_ls(settings: Settings, all_namespaces: bool) -> None:
    """List the namespace's Checkpoint objects (every namespace with -A), oldest first."""
    kube = connect(settings)
    namespace = None if all_namespaces else kube.namespace
    items = operations.list_checkpoints(kube, namespace)
    rows = [operations.checkpoint_row(o) for o in items]
    columns = [Column("NAMESPACE", "namespace"), *CHECKPOINT_COLUMNS] if all_namespaces \
        else CHECKPOINT_COLUMNS
    if rows or settings.structured:
        listing = {"apiVersion": GROUP_VERSION, "kind": f"{CHECKPOINT_RESOURCE.kind}List",
                   "metadata": {}, "items": items}
        emit(settings, listing,
             lambda: render_table(rows, columns, wide=settings.output == "wide"))
    else:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        stderr_line(f"No checkpoints found in {where}.")


@checkpoints_command("inspect")
@click.argument("checkpoint")
@click.pass_obj
def checkpoints_inspect(settings: Settings, checkpoint: str) -> None:
    """The Checkpoint object CHECKPOINT (a name, or a checkpoint ID), YAML by default."""
    kube = connect(settings)
    obj = operations.find_checkpoint(kube, kube.namespace, _id_or_name(checkpoint))
    emit(settings, obj, lambda: to_yaml(obj).rstrip("\n"))


def _id_or_name(text: str) -> str:
    return text.lower() if _looks_like_id(text) else text


@checkpoints_command("rm")
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Wait until the helpers have deleted the data and the objects are gone.")
@click.option("--timeout", default="2m", show_default=True, metavar="DURATION",
              help="How long --wait waits.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.pass_obj
def checkpoints_rm(settings: Settings, checkpoints: Sequence[str], wait: bool, timeout: str,
                   dry_run: bool) -> None:
    """Delete Checkpoint objects (names or checkpoint IDs): the helper of each one's node
    deletes its data on the node and in the registry, then the object goes."""
    limit = duration_timeout(timeout, "--timeout")
    kube = connect(settings)
    with progress(settings, "deleting") as spinner:
        rows = operations.delete_checkpoints(kube, kube.namespace,
                                             [_id_or_name(c) for c in checkpoints], wait=wait,
                                             timeout=limit, dry_run=dry_run,
                                             progress=spinner.update)

    def line(row: dict[str, Any]) -> str:
        what = f'checkpoint "{row["name"]}"' + (f" ({row['checkpoint_id']})"
                                               if row["checkpoint_id"] else "")
        if dry_run:
            return f"{what} deleted (dry run)"
        if row["deleted"]:
            return f"{what} deleted"
        return (f"{what} marked for deletion (the helper on node {row['node'] or '?'} deletes "
                "its data, then the object goes)")
    emit(settings, document("CheckpointDeletion", dry_run=dry_run, items=rows),
         lambda: "\n".join(line(r) for r in rows))


@checkpoints_command("import")
@click.argument("archive")
@click.option("--node", required=True, metavar="NODE",
              help="The node whose kubelet wrote the archive.")
@STORAGE_OPTION
@COMPRESSION_OPTION
@NAME_OPTION
@WAIT_OPTION
@WAIT_TIMEOUT_OPTION
@DRY_RUN_OPTION
@click.pass_obj
def checkpoints_import(settings: Settings, archive: str, node: str, storage: str | None,
                       compression: str | None, name: str | None, wait: bool, timeout: str,
                       dry_run: str) -> None:
    """Take in an archive the kubelet's checkpoint API wrote on NODE (its file name in the
    kubelet's checkpoint directory, checkpoint-POD_NAMESPACE-CONTAINER-TIME.tar, or that path)
    as a Checkpoint of this namespace; prints the checkpoint ID. It is then restored, migrated
    and listed like any checkpoint.

    \b
    Examples:
      kubectl cedana checkpoints import checkpoint-web_shop-app-2026-11-30T10:00:00Z.tar \\
          --node worker-1 --name web-forensic
      kubectl cedana restore web-forensic --new-pod web-copy
    """
    limit = duration_timeout(timeout, "--timeout")
    kube = connect(settings)
    start_and_finish(
        settings, kube, lambda: operations.start_import(
            kube, kube.namespace, archive, node, storage=storage, compression=compression,
            name=name or "", dry_run=dry_run),
        wait=wait, timeout=limit, label=f"importing {archive.rsplit('/', 1)[-1]}",
        text=lambda obj: checkpoint_text(settings, obj))


@checkpoints_command("prune")
@click.option("--keep", type=click.IntRange(0), metavar="N",
              help="Keep the newest N checkpoints of each container.")
@click.option("--max-bytes", type=click.IntRange(0), metavar="BYTES",
              help="Keep each container's checkpoints within BYTES, the oldest go first.")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.pass_obj
def checkpoints_prune(settings: Settings, keep: int | None, max_bytes: int | None,
                      all_namespaces: bool, dry_run: bool) -> None:
    """Delete the oldest Succeeded Checkpoint objects of each container (namespace, pod,
    container) beyond --keep and --max-bytes; their helpers delete the data."""
    kube = connect(settings)
    with progress(settings, "pruning") as spinner:
        rows = operations.prune_checkpoints(kube, None if all_namespaces else kube.namespace,
                                            keep=keep, max_bytes=max_bytes, dry_run=dry_run,
                                            progress=spinner.update)
    emit(settings, document("CheckpointPrune", dry_run=dry_run, items=rows), lambda: "\n".join(
        f'checkpoint "{r["name"]}" ({r["checkpoint_id"]}, {r["pod"]}/{r["container"]}, '
        f'{human_size(r.get("size_bytes"))}) '
        + ("would be deleted" if dry_run else "deleted") for r in rows) or "nothing to prune")


# -- version ----------------------------------------------------------------------------------
@command("version", short_help="Versions of the plugin and of each node's helper.")
@click.option("--client", is_flag=True, help="Only the plugin (no cluster access).")
@click.pass_obj
def version_command(settings: Settings, client: bool) -> None:
    """The plugin's version and, per node, the image its helper pod runs."""
    client_info = {"version": __version__, "python": platform.python_version()}
    client_line = f"Client Version: kubectl-cedana {__version__}"
    if client:
        emit(settings, document("Version", client=client_info), lambda: client_line)
        return
    kube = connect(settings)
    try:
        rows = operations.helper_versions(kube)
    except CedanaError:
        emit(settings, document("Version", client=client_info, nodes=[]), lambda: client_line)
        raise
    columns = [Column("NODE", "node"), Column("HELPER", "helper"),
               Column("READY", lambda r: "yes" if r["ready"] else "no"),
               Column("IMAGE", "image", wide=True), Column("POD", "pod", wide=True)]
    emit(settings, document("Version", client=client_info, nodes=rows),
         lambda: client_line + "\n" + render_table(rows, columns,
                                                   wide=settings.output == "wide").rstrip("\n"))


# -- doctor -----------------------------------------------------------------------------------
PREFLIGHT_COLUMNS = [Column("CONTAINER", "container"), Column("CHECK", "check"),
                     Column("RESULT", lambda r: "ok" if r.get("ok") else "fail"),
                     Column("DETAIL", "message")]


@command("doctor", short_help="Check the API, the helpers and your permissions; or a pod.")
@click.argument("pod", required=False)
@click.option("-c", "--container", metavar="NAME",
              help="With POD: one container (default: every container of the pod).")
@WAIT_TIMEOUT_OPTION
@click.pass_obj
def doctor_command(settings: Settings, pod: str | None, container: str | None,
                   timeout: str) -> None:
    """Check that the cedana.io API is installed (CRDs established, admission policy and
    binding), the helper runs on every node, and your kubeconfig user has the permissions
    the commands need (by SelfSubjectAccessReview), each with the fix.

    With POD: whether its containers can be checkpointed, and why not (io_uring, user
    namespaces, GPU devices, unix sockets connected outside, mounts CRIU cannot dump), asked
    of the helper on POD's node without freezing or dumping anything. Exit code 1 when not.

    \b
    Examples:
      kubectl cedana doctor
      kubectl cedana doctor web -c app
    """
    from kubectl_cedana.doctor import FAIL, run_doctor

    if container and not pod:
        raise UsageError("-c needs a POD")
    kube = connect(settings)
    if pod:
        limit = duration_timeout(timeout, "--timeout")
        with progress(settings, f"looking at {pod}") as spinner:
            final = operations.preflight(kube, kube.namespace, pod, container, timeout=limit,
                                         progress=spinner.update)
        status = status_of(final)
        findings = list(status.get("findings") or [])
        emit(settings, document("PreflightReport", pod=pod, node=status.get("node"),
                                checkpointable=bool(status.get("checkpointable")),
                                findings=findings),
             lambda: render_table(findings, PREFLIGHT_COLUMNS).rstrip("\n"))
        if not status.get("checkpointable"):
            blocked = ", ".join(f"{f.get('container')}: {f.get('check')}" for f in findings
                                if not f.get("ok"))
            raise CedanaError(f"pod {pod} cannot be checkpointed ({blocked or 'see the helper'})")
        return
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
        notes = [n for n in (dry_run if result["action"] != "kept" else "", result.get("note"))
                 if n]
        lines.append(f"{result['object']} {result['action']}"
                     + (f" ({'; '.join(notes)})" if notes else ""))
    return "\n".join(lines)


@command("install", short_help="Install the cedana.io API and the node helper (deploy/base).")
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
              help="How long to wait for the CRDs and for readiness.")
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
@click.option("--registry-prefix", "registry_prefixes", multiple=True, metavar="HOST[/PATH]",
              help="Where the helpers may use their node's registry credentials for rootfs "
                   "images (repeatable); {namespace} stands for the pod's namespace, e.g. "
                   "registry.example.com/rootfs/{namespace}. None: nowhere.")
# -- resource limits of each helper (docs/security.md#limits); absent: the helper's defaults --
@click.option("--max-operations", type=click.IntRange(0), metavar="N",
              help="Checkpoints and restores running at once on each node; beyond, refused "
                   "with too_many_requests (helper default: 8; 0: no limit).")
@click.option("--max-operations-per-namespace", type=click.IntRange(0), metavar="N",
              help="... of them for pods of one namespace (helper default: 4; 0: no limit).")
@click.option("--max-checkpoint-dir-bytes", type=click.IntRange(0), metavar="BYTES",
              help="Quota of each node's checkpoint directory; a checkpoint beyond is refused "
                   "with quota_exceeded (helper default: 25% of its filesystem; 0: none).")
@click.pass_obj
def install_command(settings: Settings, runtime: str, image: str | None, dry_run: str,
                    wait: bool, timeout: str, checkpoint_repository: str | None,
                    compression: str | None, max_checkpoints_per_container: int | None,
                    max_total_bytes: int | None, registry_prefixes: tuple[str, ...],
                    max_operations: int | None, max_operations_per_namespace: int | None,
                    max_checkpoint_dir_bytes: int | None) -> None:
    """Create or update the cedana.io CRDs (first, and wait until they are established),
    the helper's Namespace, ServiceAccount, RBAC, the admission policy and the DaemonSet:
    the objects `kubectl apply -k deploy/` creates. Then wait until the helper is ready."""
    from kubectl_cedana import install

    limit = duration_timeout(timeout, "--timeout")
    helper_args: list[str] = []
    for flag, value in (("--checkpoint-repository", checkpoint_repository),
                        ("--compression", compression),
                        ("--max-checkpoints-per-container", max_checkpoints_per_container),
                        ("--max-total-bytes", max_total_bytes),
                        ("--max-operations", max_operations),
                        ("--max-operations-per-namespace", max_operations_per_namespace),
                        ("--max-checkpoint-dir-bytes", max_checkpoint_dir_bytes)):
        if value is not None:
            helper_args += [flag, str(value)]
    for prefix in registry_prefixes:
        helper_args += ["--registry-prefix", prefix]
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


@command("uninstall", short_help="Remove the helper (--purge: the API and its objects too).")
@click.option("--purge", is_flag=True,
              help="Also delete every Checkpoint, Restore and Migration (the helpers delete "
                   "the checkpoints' data first), then the CRDs and the admission policy.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the objects and helper pods are gone.")
@click.option("--timeout", default="5m", show_default=True, metavar="DURATION")
@click.pass_obj
def uninstall_command(settings: Settings, purge: bool, dry_run: bool, wait: bool,
                      timeout: str) -> None:
    """Delete the objects labelled app.kubernetes.io/part-of=kubectl-cedana and wait until
    they are gone.

    Without --purge the cedana.io API stays: the CRDs with every Checkpoint, Restore and
    Migration, the admission policy and the users' ClusterRoles. A Checkpoint's data (on its
    node, in the registry) can only be deleted by the helper of its node, so delete
    checkpoints before the helpers go, or reinstall later and delete them then. --purge
    deletes every cedana.io object first and waits for the helpers to clear their
    finalizers (--timeout), then everything else, the CRDs last.
    """
    from kubectl_cedana import install

    limit = duration_timeout(timeout, "--timeout")
    kube = connect(settings)
    with progress(settings, "uninstalling") as spinner:
        results = install.uninstall(kube, dry_run=dry_run, wait=wait, timeout=limit,
                                    purge=purge, progress=spinner.update)
    emit(settings, document("Uninstall", dry_run=dry_run, purge=purge, objects=results),
         lambda: _object_lines(results, "dry run" if dry_run else "") if results else
         f"nothing to uninstall (no objects labelled {install.PART_OF_SELECTOR})")


if __name__ == "__main__":
    main()
