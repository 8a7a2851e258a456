"""`herd serve` (N local replicas + the gateway) and `herd gateway` (the gateway alone).

Settings come from `--config FILE` (TOML or YAML with [gateway] and [fleet] tables); the common
ones are also flags, and a flag given wins over the file."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
from pathlib import Path

from herd.cli import CliError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML or YAML file with [gateway] (and [fleet]) settings")
    p.add_argument("--host", help="address the gateway listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port the gateway listens on (default 8000)")
    p.add_argument("--policy", help="round_robin, least_outstanding (default), prefix_affinity")
    p.add_argument("--api-keys", help="keys file (hashed keys, tenants, models, limits)")
    p.add_argument("--admin-key", help="key that guards /admin/* (off without one)")
    p.add_argument("--redis", help="redis://host:port/db shared by gateway instances")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve HTTPS")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE",
                   help="require client certificates signed by this CA (mutual TLS)")  # fmt: skip
    p.add_argument("--upstream-ca", metavar="FILE",
                   help="trust replicas' HTTPS certificates signed by this CA")  # fmt: skip
    p.add_argument("--audit-retention-days", type=float,
                   help="delete rotated audit files older than this (default 90)")  # fmt: skip
    p.add_argument("--max-tokens-default", type=int,
                   help="max_tokens forwarded when a request and its QoS class give none")  # fmt: skip
    p.add_argument("--batch-dir", metavar="DIR",
                   help="Batch API (/v1/files, /v1/batches): files and job state live here")  # fmt: skip


def register(subparsers) -> None:
    from herd.cli.config_args import add_config_args
    from herd.engine.config import flat_fields

    p = subparsers.add_parser("serve", help="run N replicas and the gateway in front of them")
    p.add_argument(
        "--model",
        help="model directory or .gguf file (default: SmolLM2-135M-Instruct, fetched on first use)",
    )
    p.add_argument("--replicas", type=int, help="replicas to run (default 2)")
    p.add_argument("--replica-args", default="", help="extra `herd replica` flags, one string")
    p.add_argument("--log-dir", help="replica logs go here (default: a new temp directory)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: replica processes here; ray: a Ray Serve deployment")  # fmt: skip
    p.add_argument("--address", help="--backend ray: Ray cluster (auto, host:port, ray://...; "
                   "default: a private local cluster)")  # fmt: skip
    p.add_argument("--ray-proxy", action="store_true",
                   help="--backend ray: Ray Serve's HTTP proxy fronts the replicas, not the gateway")  # fmt: skip
    _autoscale_flags(p)
    _common(p)
    add_config_args(
        p.add_argument_group("engine (handed to every replica)"),
        flat_fields(),
        skip=("model",),
        pass_through=True,
    )
    p.set_defaults(func=handle_serve)

    g = subparsers.add_parser("gateway", help="run the gateway alone in front of given replicas")
    g.add_argument("--upstream", action="append", default=[], help="replica base URL (repeatable)")
    g.add_argument(
        "--discover",
        metavar="URL",
        help="find replicas that come and go: k8s://NAMESPACE/SERVICE:PORT (EndpointSlice watch "
        "from inside a pod) or dns://HOST:PORT (a headless Service's addresses)",
    )
    g.add_argument(
        "--hash-key", metavar="KEY", help="print the SHA-256 of KEY for a keys file; exit"
    )
    _common(g)
    g.set_defaults(func=handle_gateway)


def _autoscale_flags(parser: argparse.ArgumentParser) -> None:
    from herd.cli.autoscale_cmds import add_autoscale_args

    parser.add_argument("--autoscale", action="store_true", default=None,
                        help="size the fleet to its load (off: --replicas stays fixed)")  # fmt: skip
    parser.add_argument("--interruptible", action="store_true", default=None,
                        help="replicas run on spot capacity: replace an interrupted one at once")  # fmt: skip
    add_autoscale_args(parser)


def _apply_autoscale(args: argparse.Namespace, config) -> None:
    import dataclasses

    from herd.cli.autoscale_cmds import autoscale_config

    config.autoscale = autoscale_config(args, config.autoscale)
    if args.autoscale:
        config.autoscale = dataclasses.replace(config.autoscale, enabled=True)
    if args.interruptible:
        config.fleet.interruptible = True


def _load(args: argparse.Namespace):
    from herd.fleet.config import ConfigError, load_serve_config
    from herd.gateway.routing import POLICIES

    try:
        config = load_serve_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    gw = config.gateway
    names = ("host", "port", "policy", "api_keys", "admin_key", "redis", "max_tokens_default")
    names += ("batch_dir",)
    for name in (*names, "tls_cert", "tls_key", "tls_client_ca", "upstream_ca"):
        value = getattr(args, name)
        if value is not None:
            setattr(gw, name, value)
    if args.audit_retention_days is not None:
        gw.audit.retention_days = args.audit_retention_days
    _check_tls(gw)
    if gw.policy not in POLICIES:
        raise CliError(f"unknown policy {gw.policy!r}; choose one of {sorted(POLICIES)}")
    if gw.api_keys and not Path(gw.api_keys).is_file():
        raise CliError(f"keys file not found: {gw.api_keys}")
    return config


def _check_tls(gw) -> None:
    """Certificate, key and CA files are loaded now: a bad one is one line, not a traceback."""
    from herd.protocol.tls import client_context, maybe_server_context

    try:
        maybe_server_context(gw.tls_cert, gw.tls_key, gw.tls_client_ca)
        if gw.upstream_ca:
            client_context(gw.upstream_ca)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def default_model() -> Path:
    """The real default model (SmolLM2-135M-Instruct), fetched on first use."""
    from herd.model.default_model import ensure_default_model
    from herd.model.errors import ModelLoadError

    try:
        return ensure_default_model(lambda msg: print(msg, file=sys.stderr, flush=True))
    except ModelLoadError as exc:
        raise CliError(str(exc)) from None


def _gateway_or_error(config):
    from herd.gateway.app import Gateway
    from herd.gateway.config import ConfigError

    try:
        return Gateway(config)
    except (ConfigError, ValueError) as exc:
        raise CliError(str(exc)) from None


def replica_engine_flags(args: argparse.Namespace, model: str) -> list[str]:
    """The engine flags given to `herd serve`, as `herd replica` flags for every replica. A bad
    value is a `CliError` here, before any replica starts."""
    from herd.cli.config_args import as_flags, config_values
    from herd.cli.server_cmds import engine_config
    from herd.engine.config import flat_fields

    given = config_values(args, flat_fields())
    given.pop("model", None)  # serve's own --model
    engine_config(args, model=model)
    return as_flags(given)


def handle_serve(args: argparse.Namespace) -> int:
    from herd.cli.server_cmds import check_model_path
    from herd.fleet.serve import run_fleet

    config = _load(args)
    if args.backend != "ray" and (args.address or args.ray_proxy):
        raise CliError("--address and --ray-proxy need --backend ray")
    _apply_autoscale(args, config)
    fleet = config.fleet
    if args.replicas is not None:
        if args.replicas < 1:
            raise CliError("--replicas must be at least 1")
        fleet.replicas = args.replicas
    if args.model is not None:
        fleet.model = args.model
    if not fleet.model and not fleet.command:
        fleet.model = str(default_model())
    if fleet.model:
        check_model_path(fleet.model)
    engine_flags = replica_engine_flags(args, fleet.model or "")
    fleet.extra_args = [*fleet.extra_args, *engine_flags, *shlex.split(args.replica_args)]
    _gateway_or_error(config.gateway)  # config errors before any replica starts
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(f"herd serve: starting {fleet.replicas} replica(s) of {fleet.model}...", file=sys.stderr)
    model_name = Path(fleet.model).name if fleet.model else "MODEL"
    if args.backend == "ray":
        return _serve_on_ray(args, config, model_name)
    try:
        return asyncio.run(run_fleet(config, lambda gw: banner(gw, model_name), args.log_dir))
    except OSError as exc:
        raise CliError(
            f"cannot listen on {config.gateway.host}:{config.gateway.port}: {exc}"
        ) from None
    except RuntimeError as exc:
        raise CliError(str(exc)) from None


def _serve_on_ray(args: argparse.Namespace, config, model_name: str) -> int:
    from herd.cli.server_cmds import engine_config
    from herd.fleet.ray_backend import RayOptions, run_ray_fleet

    try:
        import ray.serve  # noqa: F401 - the optional extra
    except ImportError as exc:
        raise CliError(f"--backend ray needs the ray extra (scripts/ray.sh): {exc}") from None
    engine = engine_config(args, model=config.fleet.model or "")
    options = RayOptions(address=args.address, ray_proxy=args.ray_proxy)
    try:
        return run_ray_fleet(config, engine, options, lambda gw: banner(gw, model_name))
    except (OSError, RuntimeError) as exc:  # no cluster there, port taken, replicas never ready
        raise CliError(f"herd serve --backend ray: {exc}") from None


def banner(gateway, model: str) -> None:
    """Where it listens, and requests ready to paste."""
    c = gateway.config
    host = "127.0.0.1" if c.host in ("0.0.0.0", "::") else c.host
    url = f"{'https' if c.tls_cert else 'http'}://{host}:{c.port}"
    key = "YOUR_KEY" if c.api_keys else "none"
    auth = f" -H 'Authorization: Bearer {key}'" if c.api_keys else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    n = len(gateway.replicas.ready())
    print(f"herd serve: gateway on {url} with {n} ready replica(s), policy {c.policy}", flush=True)
    print(
        f"\n  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"
    )
    print(
        f'\n  python -c "from openai import OpenAI; '
        f"c = OpenAI(base_url='{url}/v1', api_key='{key}'); "
        f"print(c.chat.completions.create(model='{model}', "
        f"messages=[{{'role': 'user', 'content': 'Hello!'}}]).choices[0].message.content)\"\n",
        flush=True,
    )


def handle_gateway(args: argparse.Namespace) -> int:
    if args.hash_key is not None:
        from herd.gateway.auth import hash_key

        print(hash_key(args.hash_key))
        return 0
    config = _load(args).gateway
    config.upstreams = [*config.upstreams, *args.upstream]
    if args.discover:
        config.discovery.url = args.discover
    if not config.upstreams and not config.discovery.url:
        print("herd gateway: no upstreams yet; add some with POST /admin/replicas", file=sys.stderr)
    gateway = _gateway_or_error(config)
    discovery = _discovery_or_error(gateway)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from herd.batch.store import BatchDirBusy

    try:
        return asyncio.run(_run_gateway(gateway, discovery))
    except BatchDirBusy as exc:  # another process runs this --batch-dir's batches
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {config.host}:{config.port}: {exc}") from None


def _discovery_or_error(gateway):
    """The discovery task for --discover / [gateway.discovery] (not started), or None."""
    from herd.gateway.config import ConfigError
    from herd.gateway.discovery import make_discovery

    if not gateway.config.discovery.url:
        return None
    try:
        return make_discovery(gateway.config.discovery, gateway.replicas)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


async def _run_gateway(gateway, discovery=None) -> int:
    import signal

    from herd.gateway.app import serve

    c = gateway.config
    runner = await serve(gateway, c.host, c.port)
    scheme = "https" if c.tls_cert else "http"
    print(f"herd gateway: listening on {scheme}://{c.host}:{c.port} in front of "
          f"{len(c.upstreams)} upstream(s), policy {c.policy}", flush=True)  # fmt: skip
    if discovery is not None:
        discovery.start()
        print(f"herd gateway: discovering replicas at {c.discovery.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        await gateway.drain(c.drain_timeout_s)
    finally:
        if discovery is not None:
            await discovery.stop()
        await runner.cleanup()
    return 0
