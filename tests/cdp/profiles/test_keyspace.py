"""The Redis key layout has one source (`cdp/profiles/keyspace.py`); the Lua script, which
must name keys itself, agrees with it."""

import re
from importlib import resources

from cdp.profiles.identity import Kind, tagged
from cdp.profiles.keyspace import PARTS, Keyspace

SCRIPT = resources.files("cdp").joinpath("lua/profiles.lua").read_text()


def test_the_script_keeps_the_same_profile_parts() -> None:
    listed = re.search(r"local PARTS = \{([^}]*)\}", SCRIPT)
    assert listed is not None
    assert tuple(re.findall(r"'([a-z_]+)'", listed.group(1))) == PARTS


def test_the_script_builds_the_same_key_names() -> None:
    for fragment in ("':identity:'", "':merged:'", "':profiles'", "':day:'", "':profile:'"):
        assert fragment in SCRIPT, fragment
    keys = Keyspace("cdp")
    assert keys.identity(tagged(Kind.EMAIL, "sam@example.com")) == "cdp:identity:e:sam@example.com"
    assert keys.day("p_1", 20000) == "cdp:profile:p_1:day:20000"
    assert keys.profile("p_1", "cart") == "cdp:profile:p_1:cart"
