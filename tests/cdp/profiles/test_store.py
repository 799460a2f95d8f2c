"""The identity graph on a real Valkey: links, the guards against bad merges, and
convergence whatever order the events arrive in."""

from __future__ import annotations

import itertools

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cdp.profiles.store import ProfileStore
from cdp.settings import Settings
from tests.events import BASE_MS, stored


@pytest.fixture
def store(settings: Settings, redis_client: redis.Redis) -> ProfileStore:
    return ProfileStore(
        redis_client, settings.redis_prefix, settings.records_stream, identity_cap=5
    )


def profile_of(store: ProfileStore, tag: str, value: str) -> str:
    found = store.find(tag, value)
    assert found is not None, f"no profile for {tag}:{value}"
    return found


def test_identify_links_devices_and_the_older_profile_survives(store: ProfileStore) -> None:
    store.apply_events(
        [
            stored(event="Product Viewed", at=1, anonymous_id="phone"),
            stored(event="Product Viewed", at=2, anonymous_id="laptop"),
            stored(
                "identify", at=3, anonymous_id="laptop", user_id="u1", traits={"email": "A@x.io"}
            ),
        ]
    )
    assert store.profile_ids() == {profile_of(store, "a", "phone"), profile_of(store, "u", "u1")}
    phone_profile = profile_of(store, "a", "phone")
    applied = store.apply_events([stored("identify", at=4, anonymous_id="phone", user_id="u1")])
    assert applied.merges == 1
    survivor = profile_of(store, "u", "u1")
    assert survivor == phone_profile  # the phone was seen first
    assert profile_of(store, "a", "laptop") == profile_of(store, "e", "a@x.io") == survivor
    profile = store.read(survivor)
    assert profile is not None
    assert profile.features["events"] == 4
    assert profile.features["counts"]["7d"]["events"]["Product Viewed"] == 2
    assert len(profile.merged_profiles) == 1
    # The merged-away id still finds the person, and changes made through it reach them.
    merged = store.read(profile.merged_profiles[0])
    assert merged is not None and merged.id == survivor
    consent = {"kind": "consent", "profile": profile.merged_profiles[0], "t": 10**13,
               "consent": ["sms", "marketing", "granted"], "source": "api"}  # fmt: skip
    assert store.apply([consent]).events == 1
    after = store.read(survivor)
    assert after is not None and after.consent["sms"]["marketing"]["status"] == "granted"


def test_two_user_ids_never_merge_through_a_shared_identifier(store: ProfileStore) -> None:
    applied = store.apply_events(
        [
            stored("identify", at=1, anonymous_id="shared", user_id="ann"),
            stored("identify", at=2, anonymous_id="shared", user_id="bob"),
            stored("identify", at=3, user_id="carl", traits={"email": "c@x.io"}),
            stored("identify", at=4, user_id="dora", traits={"email": "c@x.io"}),
        ]
    )
    assert applied.merges == 0 and applied.refused_merges == 2
    assert len({profile_of(store, "u", u) for u in ("ann", "bob", "carl", "dora")}) == 4
    assert profile_of(store, "a", "shared") == profile_of(store, "u", "ann")
    assert profile_of(store, "e", "c@x.io") == profile_of(store, "u", "carl")
    dora = store.read(profile_of(store, "u", "dora"))
    assert dora is not None and "both have a user id" in dora.log[0]["message"]


def test_an_explicit_alias_may_join_two_user_ids(store: ProfileStore) -> None:
    store.apply_events(
        [
            stored("identify", at=1, user_id="guest-7"),
            stored("identify", at=2, user_id="42"),
            stored("alias", at=3, user_id="42", previous_id="guest-7"),
        ]
    )
    assert profile_of(store, "u", "guest-7") == profile_of(store, "u", "42")


def test_after_reset_the_next_person_gets_their_own_profile(store: ProfileStore) -> None:
    # One shared computer: Ann logs in, the shop calls reset() at logout, so the snippet
    # starts a new anonymous id; Bob then browses and logs in.
    store.apply_events([
        stored(event="Product Viewed", at=1, anonymous_id="cookie-1"),
        stored("identify", at=2, anonymous_id="cookie-1", user_id="ann"),
        stored(event="Product Viewed", at=3, anonymous_id="cookie-2"),
        stored("identify", at=4, anonymous_id="cookie-2", user_id="bob"),
        stored(event="Product Added", at=5, anonymous_id="cookie-2", user_id="bob",
               properties={"product_id": "p1"}),
    ])  # fmt: skip
    ann, bob = profile_of(store, "u", "ann"), profile_of(store, "u", "bob")
    assert ann != bob
    assert profile_of(store, "a", "cookie-2") == bob
    bob_profile, ann_profile = store.read(bob), store.read(ann)
    assert bob_profile and ann_profile
    assert bob_profile.features["events"] == 3 and ann_profile.features["events"] == 2
    assert ann_profile.features["cart"] == []


def test_identifiers_per_profile_are_capped(store: ProfileStore) -> None:
    # Cap 5: one user and four cookies; a fifth cookie is not linked, a warning says so.
    events = [stored("identify", at=i, anonymous_id=f"c{i}", user_id="u") for i in range(6)]
    store.apply_events(events)
    profile = store.read(profile_of(store, "u", "u"))
    assert profile is not None and len(profile.identities) == 5
    assert store.find("a", "c5") is None
    assert "not linked" in profile.log[0]["message"]


def test_a_malformed_email_stays_a_trait_and_is_no_identifier(store: ProfileStore) -> None:
    store.apply_events(
        [
            stored("identify", at=1, user_id="u", traits={"email": "not-an-email", "phone": "12"}),
        ]
    )
    profile = store.read(profile_of(store, "u", "u"))
    assert profile is not None
    assert profile.traits["email"] == "not-an-email"
    assert [i["kind"] for i in profile.identities] == ["user_id"]
    messages = " ".join(entry["message"] for entry in profile.log)
    assert "not-an-email" in messages and "phone '12'" in messages


def test_an_entry_applied_twice_counts_once(store: ProfileStore) -> None:
    # The stream holds each message once (deduplicated at the edge); a stream entry handed
    # out again after a crash is recognised by its marker.
    added = stored(event="Product Added", at=1, anonymous_id="a", properties={"product_id": "p"})
    viewed = stored(event="Product Viewed", at=2, anonymous_id="a", properties={"product_id": "p"})
    assert store.apply_entries([("1-0", [added, viewed])]).events == 2
    again = store.apply_entries([("1-0", [added, viewed]), ("2-0", [viewed])])
    assert (again.events, again.seen_before) == (1, 2)
    profile = store.read(profile_of(store, "a", "a"))
    assert profile is not None and profile.features["cart"][0]["quantity"] == 1
    assert profile.features["events"] == 3


# Out of order: the same events in any order give the same profiles.

STORY = [
    stored(event="Product Viewed", at=1, anonymous_id="phone",
           properties={"product_id": "p1", "category": "shoes"}),
    stored("identify", at=2, anonymous_id="phone", user_id="u1", traits={"name": "Ann"}),
    stored(event="Product Viewed", at=3, anonymous_id="laptop",
           properties={"product_id": "p2", "category": "bags"}),
    stored("identify", at=4, anonymous_id="laptop", traits={"email": "ann@x.io", "name": "A."}),
    stored("identify", at=5, user_id="u1", traits={"email": "ann@x.io"}),
    stored(event="Order Completed", at=6, anonymous_id="tablet", user_id="u1",
           properties={"total": 30.5}),
    stored("identify", at=7, anonymous_id="other", user_id="u2"),
]  # fmt: skip


def snapshot(store: ProfileStore) -> dict[str, object]:
    profiles = {}
    for pid in store.profile_ids():
        profile = store.read(pid)
        assert profile is not None
        profiles[pid] = (
            sorted((i["kind"], i["value"], i["first_seen"]) for i in profile.identities),
            profile.traits,
            profile.features,
            profile.first_seen,
            profile.last_seen,
        )
    return profiles


def wipe(client: redis.Redis, prefix: str) -> None:
    """All profile state but the salt profile ids are made with."""
    keys = [
        k
        for k in client.scan_iter(match=f"{prefix}:*", count=1000)
        if k != f"{prefix}:salt".encode()
    ]
    if keys:
        client.delete(*keys)


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.permutations(range(len(STORY))))
def test_merges_arriving_out_of_order_converge(
    store: ProfileStore, redis_client: redis.Redis, order: list[int]
) -> None:
    wipe(redis_client, store.prefix)
    store.apply_events(STORY)
    expected = snapshot(store)
    wipe(redis_client, store.prefix)
    store.apply_events([STORY[i] for i in order])
    assert snapshot(store) == expected
    assert len(expected) == 2  # u1 with phone, laptop, tablet and the e-mail; u2


def test_every_order_of_a_small_story_converges(
    store: ProfileStore, redis_client: redis.Redis
) -> None:
    story = STORY[:5]
    results = []
    for order in itertools.permutations(story):
        wipe(redis_client, store.prefix)
        store.apply_events(order)
        results.append(snapshot(store))
    assert all(result == results[0] for result in results)
    [(identities, *_)] = results[0].values()
    assert {(kind, value) for kind, value, _ in identities} == {
        ("anonymous_id", "phone"), ("anonymous_id", "laptop"), ("user_id", "u1"),
        ("email", "ann@x.io"),
    }  # fmt: skip


def test_the_audience_history_keeps_a_profiles_newest_events_up_to_its_cap(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A client sending without end (a bot on the public write key) would otherwise make
    every evaluation of its profile read all it ever sent."""
    store = ProfileStore(redis_client, settings.redis_prefix, settings.records_stream,
                         history_events=100)  # fmt: skip
    store.apply_events([stored("track", "Product Viewed", at=i, anonymous_id="bot")
                        for i in range(150)])  # fmt: skip
    bot = profile_of(store, "a", "bot")
    inputs = store.audience_inputs(bot, 0)
    assert inputs is not None
    assert [at for at, *_ in inputs.history] == [BASE_MS + i * 1000 for i in range(50, 150)]

    # Merged with another device's: the newest 100 of both.
    store.apply_events([stored("track", "Product Viewed", at=200 + i, anonymous_id="phone")
                        for i in range(80)])  # fmt: skip
    store.apply_events([stored("identify", at=300, anonymous_id=who, user_id="u")
                        for who in ("bot", "phone")])  # fmt: skip
    merged = store.audience_inputs(profile_of(store, "u", "u"), 0)
    assert merged is not None
    assert [at for at, *_ in merged.history] == [BASE_MS + i * 1000 for i in
                                                 [*range(130, 150), *range(200, 280)]]  # fmt: skip


def test_an_events_properties_past_the_history_budget_are_not_kept_and_the_log_says_so(
    store: ProfileStore,
) -> None:
    properties = {"product_id": "p1", **{f"p{i:03d}": "v" * 20 for i in range(200)}}
    store.apply_events([stored("track", "Product Viewed", anonymous_id="wide",
                               properties=properties)])  # fmt: skip
    wide = profile_of(store, "a", "wide")
    inputs = store.audience_inputs(wide, 0)
    assert inputs is not None
    [(_, _, _, kept)] = inputs.history
    assert list(kept) == list(properties)[: len(kept)] and 50 < len(kept) < 100
    profile = store.read(wide)
    assert profile is not None
    assert profile.log[0]["message"].startswith(f"properties from 'p{len(kept) - 1:03d}' on not")


@pytest.mark.parametrize("phone_zone", ["Europe/Berlin", "Asia/Tokyo"])
def test_two_time_zones_told_at_one_moment_give_one_answer_in_any_order(
    store: ProfileStore, redis_client: redis.Redis, phone_zone: str
) -> None:
    """Two devices of one person tell different zones at the same millisecond: whichever
    arrives first, whether the merge comes before or after, and whichever device's profile
    survives it, the profile keeps the greater name (as the SQL path of audiences picks it),
    not the one that happened to come last."""
    laptop_zone = "Asia/Tokyo" if phone_zone == "Europe/Berlin" else "Europe/Berlin"
    story = [
        stored(event="Product Viewed", at=1, anonymous_id="phone",
               context={"timezone": phone_zone}),
        stored(event="Product Viewed", at=1, anonymous_id="laptop",
               context={"timezone": laptop_zone}),
        stored("identify", at=2, anonymous_id="laptop", user_id="u1"),
        stored("identify", at=3, anonymous_id="phone", user_id="u1"),
    ]  # fmt: skip
    zones = set()
    for order in itertools.permutations(story):
        wipe(redis_client, store.prefix)
        store.apply_events(order)
        profile = store.read(profile_of(store, "u", "u1"))
        assert profile is not None
        zones.add(profile.timezone)
    assert zones == {"Europe/Berlin"}
