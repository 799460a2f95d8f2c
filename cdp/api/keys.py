"""Secret API keys: make, list, revoke."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field

from cdp.api.common import ADMIN, errors, provided, resource_router
from cdp.credentials import ApiKeys, Scope
from cdp.errors import NotFound


class NewKey(BaseModel):
    scope: Scope
    name: str = Field(default="", max_length=100)


class KeyOut(BaseModel):
    id: str = Field(description="Public: names the key, opens nothing")
    name: str
    scope: Scope
    created_at: str


class NewKeyOut(KeyOut):
    secret: str = Field(description="Shown only in this answer; kept only as a digest")


class RevokedOut(BaseModel):
    revoked: str


API = provided(ApiKeys)
router = resource_router()


@router.post(
    "/keys",
    tags=["keys"],
    summary="Make an API key; its secret is shown only now",
    response_model=NewKeyOut,
    responses=errors(400),
)
def create_key(body: NewKey, _: ADMIN, keys: ApiKeys = API) -> dict[str, Any]:
    secret, key = keys.create(body.scope, body.name)
    return {**asdict(key), "secret": secret}


@router.get(
    "/keys",
    tags=["keys"],
    summary="The API keys (never their secrets)",
    response_model=list[KeyOut],
)
def list_keys(_: ADMIN, keys: ApiKeys = API) -> list[dict[str, Any]]:
    return [asdict(key) for key in keys.list()]


@router.delete(
    "/keys/{key_id}",
    tags=["keys"],
    summary="Revoke an API key",
    response_model=RevokedOut,
    responses=errors(404),
)
def revoke_key(key_id: str, _: ADMIN, keys: ApiKeys = API) -> dict[str, Any]:
    if not keys.revoke(key_id):
        raise NotFound(f"no API key {key_id}")
    return {"revoked": key_id}
