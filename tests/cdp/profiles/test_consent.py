from cdp.profiles.consent import parse_consent


def test_the_three_shapes_of_a_consent_object() -> None:
    statements, warnings = parse_consent(
        {
            "email": "granted",
            "sms": False,
            "whatsapp": {"transactional": True, "marketing": "revoked"},
        }
    )
    assert statements == [
        ("email", "marketing", "granted"),
        ("sms", "marketing", "denied"),
        ("whatsapp", "transactional", "granted"),
        ("whatsapp", "marketing", "revoked"),
    ]
    assert warnings == []


def test_unknown_parts_are_reported_and_skipped() -> None:
    statements, warnings = parse_consent(
        {"fax": "granted", "email": {"spam": True, "marketing": "maybe"}, "web": True}
    )
    assert statements == [("web", "marketing", "granted")]
    assert warnings == [
        "consent channel 'fax' is unknown",
        "consent purpose 'spam' is unknown",
        "consent email.marketing: 'maybe' is not a status",
    ]
    assert parse_consent("yes") == ([], ["consent must be an object of channels"])
