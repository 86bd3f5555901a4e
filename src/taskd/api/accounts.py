"""``/v1/accounts/{user_id}``: an account's membership and quota."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from taskd.api.auth import USER_ID_PATTERN
from taskd.api.dependencies import Api, Caller, require_admin
from taskd.api.models import AccountIn, AccountOut
from taskd.errors import AccountNotFound
from taskd.queue.accounts import Account

UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="the account's user id")]

router = APIRouter(tags=["accounts"])


def _account_out(account: Account, *, created: bool) -> AccountOut:
    return AccountOut(user_id=account.user_id, is_member=account.is_member,
                      quota_remaining=account.quota_remaining, created=created,
                      created_at=account.created_at, updated_at=account.updated_at)


@router.put("/v1/accounts/{user_id}", response_model=AccountOut)
async def put_account(caller: Caller, api: Api, user_id: UserId, body: AccountIn) -> AccountOut:
    """Create or update an account (admin); the quota change is written to the ledger."""
    require_admin(caller)
    account, created = await api.put_account(
        user_id, is_member=body.is_member, quota_remaining=body.quota_remaining
    )
    return _account_out(account, created=created)


@router.get("/v1/accounts/{user_id}", response_model=AccountOut)
async def get_account(caller: Caller, api: Api, user_id: UserId) -> AccountOut:
    """An account's membership and quota (its own user, or an admin)."""
    if user_id != caller.user_id:
        require_admin(caller)
    account = await api.get_account(user_id)
    if account is None:
        raise AccountNotFound(f"user {user_id!r} not found")
    return _account_out(account, created=False)
