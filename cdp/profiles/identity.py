"""Identifiers a profile is known by, normalised so that one person's spellings meet:
`anonymous_id` (the first-party cookie), `user_id`, `email` (lower-cased, validated) and
`phone` (E.164). A malformed e-mail or phone stays a trait but is never an identifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email


class Kind(StrEnum):
    ANONYMOUS_ID = "anonymous_id"
    USER_ID = "user_id"
    EMAIL = "email"
    PHONE = "phone"

    @property
    def tag(self) -> str:
        """The short form used in Redis keys (`u:42`, `e:ann@example.com`)."""
        return TAGS[self]


TAGS = {Kind.ANONYMOUS_ID: "a", Kind.USER_ID: "u", Kind.EMAIL: "e", Kind.PHONE: "p"}
KINDS = {tag: kind for kind, tag in TAGS.items()}


class InvalidIdentifier(ValueError):
    pass


@lru_cache(maxsize=65_536)  # the same people come back, and validation is slow
def normalise_email(value: str) -> str:
    try:
        email = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as error:
        raise InvalidIdentifier(f"e-mail {value!r} is not valid: {error}") from None
    return email.normalized.lower()


@lru_cache(maxsize=65_536)
def normalise_phone(value: str, region: str | None = None) -> str:
    """E.164; a number without a country code needs the region (ISO 3166 alpha-2) it is from."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as error:
        raise InvalidIdentifier(f"phone {value!r} is not valid: {error}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifier(f"phone {value!r} is not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise(kind: Kind, value: str, region: str | None = None) -> str:
    if kind is Kind.EMAIL:
        return normalise_email(value)
    if kind is Kind.PHONE:
        return normalise_phone(value, region)
    if not value.strip():
        raise InvalidIdentifier(f"{kind} is empty")
    return value


def tagged(kind: Kind, value: str) -> str:
    return f"{kind.tag}:{value}"


def untag(ident: str) -> tuple[Kind, str]:
    tag, _, value = ident.partition(":")
    return KINDS[tag], value


@dataclass
class EventIdentifiers:
    """The identifiers an event names, user id first; what could not be used, and why."""

    tagged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


TRAIT_IDENTIFIERS = (("email", "e:", normalise_email), ("phone", "p:", normalise_phone))


def identifiers_of(
    user_id: str, anonymous_id: str, traits: dict[str, Any], region: Callable[[], str | None]
) -> EventIdentifiers:
    """`region` is asked only when a phone number needs one."""
    found = EventIdentifiers()
    if user_id:
        found.tagged.append("u:" + user_id)
    if anonymous_id:
        found.tagged.append("a:" + anonymous_id)
    if not traits:
        return found
    for name, tag, normalise_value in TRAIT_IDENTIFIERS:
        value = traits.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            found.warnings.append(f"trait {name} is not text; not used as an identifier")
            continue
        try:
            if tag == "p:" and not value.startswith("+"):
                found.tagged.append(tag + normalise_phone(value, region()))
            else:
                found.tagged.append(tag + normalise_value(value))
        except InvalidIdentifier as error:
            found.warnings.append(f"{error}; kept as a trait, not used as an identifier")
    return found
