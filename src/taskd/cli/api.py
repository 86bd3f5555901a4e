"""``taskd api`` (serve the HTTP API) and ``taskd api token`` (mint a JWT for operators)."""

from __future__ import annotations

import typer

from taskd.cli.app import app, configure_logging, settings_of
from taskd.errors import ConfigError

# What the api extra installs (pip install 'taskd[api]'), by the name Python imports.
API_EXTRA_MODULES = {"fastapi", "starlette", "uvicorn", "jwt", "cryptography", "jinja2",
                     "multipart", "python_multipart"}


def _api_extra_missing(exc: ModuleNotFoundError) -> ConfigError:
    return ConfigError(f"taskd api needs the api extra: pip install 'taskd[api]' "
                       f"(no module named {exc.name!r})")

api_app = typer.Typer(
    help="The HTTP API: submit, read, cancel and retry tasks; accounts; system status.\n\n"
    "Without a subcommand, serves on api.addr [TASKD_API__ADDR] (default 127.0.0.1:8080) "
    "until SIGTERM. Needs api.jwt_secret [TASKD_API__JWT_SECRET] of at least 32 bytes "
    "(HS256), or api.jwt_algorithm=RS256 with api.jwt_public_key. The OpenAPI document is "
    "served at /openapi.json, the interactive docs at /docs, a health check at /healthz, "
    "the operators' console at /console (sign in with a token from `taskd api token`). "
    "Several processes may share api.addr with api.reuse_port=true [TASKD_API__REUSE_PORT], "
    "one a core (deploy/systemd/taskd-api@.service).",
    invoke_without_command=True,
    no_args_is_help=False,
    rich_markup_mode=None,
)
app.add_typer(api_app, name="api")


@api_app.callback()
def api(ctx: typer.Context) -> None:
    """Serve the HTTP API until SIGTERM (systemd: Type=notify)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        from taskd.api.server import run
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in API_EXTRA_MODULES:
            raise
        raise _api_extra_missing(exc) from None

    settings = settings_of(ctx)
    configure_logging(settings)
    run(settings)


@api_app.command()
def token(
    ctx: typer.Context,
    user: str = typer.Option(..., "--user", help="the user id (the token's sub claim)"),
    admin: bool = typer.Option(False, "--admin", help="add role: admin (admin endpoints)"),
    ttl: str = typer.Option("1h", "--ttl", help="lifetime: seconds, or 30m, 1h, 7d"),
    private_key: str | None = typer.Option(
        None, "--private-key", help="RS256 only: the PEM private key, or a file holding it"
    ),
) -> None:
    """Mint a token and print it alone on stdout, signed with the API's configured key."""
    from taskd.errors import InvalidInput

    try:
        from taskd.api.auth import mint_token, parse_ttl
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in API_EXTRA_MODULES:
            raise
        raise _api_extra_missing(exc) from None

    settings = settings_of(ctx)
    try:
        seconds = parse_ttl(ttl)
        minted = mint_token(settings.api, user, admin=admin, ttl=seconds,
                            private_key=private_key)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    typer.echo(minted)
