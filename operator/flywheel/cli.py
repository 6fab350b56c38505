"""The ``flywheel`` command line: run the operator, generate CRDs, drive the dev cluster."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from flywheel import __version__
from flywheel.errors import FlywheelError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Flywheel turns Kubernetes incidents into verified remediations."""
    from flywheel.logs import configure_logging

    # Logs go to stderr so that command output (e.g. `dev env`) stays machine-readable.
    configure_logging(os.environ.get("FLYWHEEL_LOG_LEVEL", "INFO"), os.environ.get("FLYWHEEL_LOG_FORMAT", "console"))


@cli.command()
def version() -> None:
    """Print the Flywheel version."""
    click.echo(f"flywheel {__version__}")


@cli.command()
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable, globs allowed).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch the whole cluster (the default without -n).")
@click.option("--standalone", is_flag=True, help="Run without peering (a single operator, no leader election).")
@click.option("--peering", "peering_name", default="flywheel", show_default=True, help="Kopf peering object name.")
@click.option("--priority", type=int, default=None, help="Peering priority (higher wins); default derived from the pod.")
@click.option("--liveness", "liveness_endpoint", default=None, help="Kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")
def run(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    standalone: bool,
    peering_name: str,
    priority: int | None,
    liveness_endpoint: str | None,
) -> None:
    """Start the operator (Kopf) with settings from FLYWHEEL_* environment variables."""
    if namespaces and all_namespaces:
        raise click.UsageError("use either --namespace or --all-namespaces, not both")
    from flywheel.main import run_operator

    run_operator(
        namespaces=list(namespaces),
        standalone=standalone,
        peering_name=peering_name,
        priority=priority,
        liveness_endpoint=liveness_endpoint,
    )


@cli.command()
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("crds"), show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 when the files differ from what the models generate.")
def crds(output_dir: Path, check: bool) -> None:
    """Generate the CustomResourceDefinitions from the API models."""
    from flywheel.api.crdgen import check_crds, write_crds

    if check:
        stale = check_crds(output_dir)
        if stale:
            click.echo(f"out of date: {', '.join(stale)} (run `flywheel crds`)", err=True)
            sys.exit(1)
        click.echo("CRDs are up to date")
        return
    for path in write_crds(output_dir):
        click.echo(f"wrote {path}")


@cli.command("webhook-cert")
@click.option("--service", default="flywheel", show_default=True, help="Name of the operator's Service.")
@click.option("--namespace", default="flywheel-system", show_default=True, help="Namespace of that Service.")
@click.option(
    "--output-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Where to write the files."
)
def webhook_cert(service: str, namespace: str, output_dir: Path) -> None:
    """Write a CA (ca.crt) and a serving certificate (tls.crt, tls.key) for the admission webhooks.

    For clusters without cert-manager: put tls.crt and tls.key into the Secret the Deployment
    mounts, and ca.crt (base64) into the webhook configurations' caBundle (see docs/operations.md).
    """
    from flywheel.stores.webhooks import write_certificate

    names = [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local", service]
    certificate = write_certificate(output_dir, names)
    click.echo(f"wrote {certificate.directory}/ca.crt, tls.crt, tls.key for {names[0]}")


@cli.command("config-reference")
def config_reference() -> None:
    """Print the settings as a Markdown table (the README's configuration section)."""
    from pydantic import SecretStr

    from flywheel.settings import FlywheelSettings

    click.echo("| Variable | Default | Description |")
    click.echo("|---|---|---|")
    for name, field in FlywheelSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):  # a default is documentation, never a secret
            default = default.get_secret_value()
        shown = "" if default is None or default == [] else f"`{default}`"
        click.echo(f"| `FLYWHEEL_{name.upper()}` | {shown} | {field.description or ''} |")


@cli.group()
def dev() -> None:
    """A local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK) and Redis."""


_cluster_name = click.option("--name", default="flywheel", show_default=True, help="Cluster name.")


@dev.command("up")
@_cluster_name
@click.option("--no-redis", is_flag=True, help="Do not start a Redis next to the cluster.")
def dev_up(name: str, no_redis: bool) -> None:
    """Build (once) and start the local cluster; harmless when it already runs."""
    from flywheel.devcluster import DevCluster

    cluster = DevCluster(name)
    cluster.up(with_redis=not no_redis)
    status = cluster.status()
    click.echo(f"cluster {name} is up with {len(status['nodes'])} fake nodes")  # type: ignore[arg-type]
    click.echo(f"  export KUBECONFIG={cluster.paths.kubeconfig}")
    click.echo(f"  export PATH={cluster.bin_dir}:$PATH   # kubectl of the cluster's version")
    if status["redis"]:
        click.echo(f"  export FLYWHEEL_REDIS_URL={status['redis']}")
    click.echo("  kubectl get nodes")


@dev.command("env")
@_cluster_name
def dev_env(name: str) -> None:
    """Print shell exports for the cluster: eval "$(flywheel dev env)"."""
    from flywheel.devcluster import DevCluster

    cluster = DevCluster(name)
    status = cluster.status()
    if not status["apiserverReady"]:
        raise click.ClickException(f"cluster {name} is not running (run `flywheel dev up --name {name}`)")
    click.echo(f"export KUBECONFIG={cluster.paths.kubeconfig}")
    click.echo(f"export PATH={cluster.bin_dir}:$PATH")
    if status["redis"]:
        click.echo(f"export FLYWHEEL_REDIS_URL={status['redis']}")


@dev.command("down")
@_cluster_name
def dev_down(name: str) -> None:
    """Stop everything `dev up` (and the demo) started."""
    from flywheel.devcluster import DevCluster

    DevCluster(name).down()
    click.echo(f"cluster {name} stopped and deleted")


@dev.command("status")
@_cluster_name
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def dev_status(name: str, output: str) -> None:
    """Say what runs: cluster components, nodes, Redis, the demo operator."""
    from flywheel.devcluster import DevCluster

    status = DevCluster(name).status()
    if output == "json":
        click.echo(json.dumps(status, indent=2))
        return
    if not status["exists"]:
        click.echo(f"cluster {name}: not created (run `flywheel dev up --name {name}`)")
    else:
        ready = "ready" if status["apiserverReady"] else "NOT ready"
        click.echo(f"cluster {name}: kube-apiserver {ready}")
        for component, state in status["components"].items():  # type: ignore[attr-defined]
            click.echo(f"  {component:<26} {state}")
        click.echo(f"  nodes: {' '.join(status['nodes']) or 'none'}")  # type: ignore[arg-type]
        click.echo(f"  kubeconfig: {status['kubeconfig']}")
    click.echo(f"redis: {status['redis'] or 'not running'}")
    click.echo(f"operator: {'pid ' + str(status['operatorPid']) if status['operatorPid'] else 'not running'}")


def _register_reviewer_commands() -> None:
    from flywheel.cli_history import db_group, history_command, timeline_command

    cli.add_command(history_command)
    cli.add_command(timeline_command)
    cli.add_command(db_group)


def _register_approver_commands() -> None:
    from flywheel.cli_approvals import approvals_command, approve_command, reject_command
    from flywheel.cli_explain import explain_group

    cli.add_command(approvals_command)
    cli.add_command(approve_command)
    cli.add_command(reject_command)
    cli.add_command(explain_group)


_register_reviewer_commands()
_register_approver_commands()


def main(prog_name: str | None = None) -> None:
    try:
        cli(standalone_mode=True, prog_name=prog_name)
    except FlywheelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def kubectl_plugin_main() -> None:
    """``kubectl flywheel ...``: kubectl runs ``kubectl-flywheel`` found on PATH with the rest of the line."""
    main(prog_name="kubectl flywheel")
