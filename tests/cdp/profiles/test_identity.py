import pytest

from cdp.profiles.identity import (
    InvalidIdentifier,
    identifiers_of,
    normalise_email,
    normalise_phone,
)


def test_emails_meet_whatever_their_case_and_spaces() -> None:
    assert normalise_email("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    with pytest.raises(InvalidIdentifier, match="not valid"):
        normalise_email("ann@")


def test_phones_become_e164_with_a_region_when_they_lack_a_country_code() -> None:
    assert normalise_phone("+49 (30) 901820") == "+4930901820"
    assert normalise_phone("030 901820", "DE") == "+4930901820"
    with pytest.raises(InvalidIdentifier):
        normalise_phone("030 901820")  # no country code, no region
    with pytest.raises(InvalidIdentifier):
        normalise_phone("+49 1")


def test_an_event_names_its_user_first_and_reports_what_it_cannot_use() -> None:
    found = identifiers_of("u1", "a1", {"email": "A@B.io", "phone": 12345}, lambda: None)
    assert found.tagged == ["u:u1", "a:a1", "e:a@b.io"]
    assert found.warnings == ["trait phone is not text; not used as an identifier"]
    bad = identifiers_of("", "a1", {"email": "nope"}, lambda: None)
    assert bad.tagged == ["a:a1"] and "kept as a trait" in bad.warnings[0]
