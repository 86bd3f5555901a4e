"""``taskd accounts put|show``: the HTTP API's accounts (membership and quota) from a shell."""

from __future__ import annotations

import json

import typer

from taskd.cli.app import app, open_store, run_async, settings_of
from taskd.errors import AccountNotFound, InvalidInput
from taskd.queue.accounts import Account, ApiStore

accounts_app = typer.Typer(
    name="accounts", no_args_is_help=True,
    help="The HTTP API's accounts: each create takes one unit of the user's quota.",
    rich_markup_mode=None,
)
app.add_typer(accounts_app)


def account_json(account: Account) -> dict[str, object]:
    return {"user_id": account.user_id, "is_member": account.is_member,
            "quota_remaining": account.quota_remaining,
            "created_at": account.created_at.isoformat(),
            "updated_at": account.updated_at.isoformat()}


def _line(account: Account, what: str) -> str:
    member = "member" if account.is_member else "not a member"
    return f"account {account.user_id}: {member}, quota {account.quota_remaining}{what}"


@accounts_app.command("put")
def put_command(
    ctx: typer.Context,
    user: str = typer.Argument(..., help="the user id (a token's sub claim)"),
    quota: int = typer.Option(..., "--quota", help="tasks the user may still create"),
    member: bool | None = typer.Option(
        None, "--member/--no-member",
        help="whether the membership is active (default: a new account is a member, an "
        "existing one stays as it is)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object for scripts"),
) -> None:
    """Create or update USER's account; the quota change is written to the quota ledger."""
    settings = settings_of(ctx)

    async def go() -> tuple[Account, bool]:
        async with open_store(settings) as store:
            api = ApiStore(store)
            is_member = member
            if is_member is None:
                existing = await api.get_account(user)
                is_member = existing.is_member if existing is not None else True
            try:
                return await api.put_account(user, is_member=is_member, quota_remaining=quota)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from exc

    account, created = run_async(go)
    if as_json:
        typer.echo(json.dumps({**account_json(account), "created": created}, indent=2))
    else:
        typer.echo(_line(account, " (created)" if created else ""))


@accounts_app.command("show")
def show_command(
    ctx: typer.Context,
    user: str = typer.Argument(..., help="the user id"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object for scripts"),
) -> None:
    """Show USER's membership and quota. Exit 1 when there is no such account."""
    settings = settings_of(ctx)

    async def go() -> Account | None:
        async with open_store(settings) as store:
            return await ApiStore(store).get_account(user)

    account = run_async(go)
    if account is None:
        raise AccountNotFound(f"user {user!r} not found: create the account with "
                              f"`taskd accounts put {user} --quota N`")
    typer.echo(json.dumps(account_json(account), indent=2) if as_json else _line(account, ""))
