"""ProfileReader, the read interface rules and activation use, keeps its promises on a real
Valkey: a merged-away id reads the survivor, an unknown id reads as None, consent as
stated."""

from __future__ import annotations

import redis

from cdp.profiles.reader import ProfileReader
from cdp.profiles.store import ProfileStore
from cdp.settings import Settings
from tests.events import stored


def test_the_reader_follows_merges_and_says_none_for_the_unknown(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store = ProfileStore(redis_client, settings.redis_prefix, settings.records_stream)
    store.apply_events([
        stored(event="Product Viewed", at=1, anonymous_id="phone"),
        stored(event="Product Viewed", at=2, anonymous_id="laptop"),
        stored("identify", at=3, anonymous_id="laptop", user_id="u1",
               traits={"email": "Sam@Example.com", "consent": {"email": "granted"}}),
        stored("identify", at=4, anonymous_id="phone", user_id="u1"),
    ])  # fmt: skip
    reader = ProfileReader(redis_client, settings.redis_prefix)  # a reader writes nothing
    survivor = reader.find("e", "sam@example.com")
    assert survivor is not None and reader.find("a", "laptop") == survivor
    profile = reader.read(survivor)
    assert profile is not None and len(profile.merged_profiles) == 1
    merged_away = profile.merged_profiles[0]
    assert reader.live_id(merged_away) == survivor
    assert reader.read(merged_away).id == survivor  # type: ignore[union-attr]
    assert reader.consent(merged_away)["email"]["marketing"]["status"] == "granted"  # type: ignore[index]
    assert reader.find("e", "nobody@example.com") is None
    assert reader.read("p_unknown") is None and reader.consent("p_unknown") is None
    assert reader.counts() == (1, 1)
