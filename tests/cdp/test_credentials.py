import json
from pathlib import Path

from cdp.credentials import load_credentials, source_id
from cdp.settings import Settings


def test_keys_are_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, write_keys=[], admin_key="")
    first = load_credentials(settings)
    assert len(first.write_keys) == 1 and next(iter(first.write_keys)).startswith("wk_")
    assert first.admin_key.startswith("sk_")
    assert load_credentials(settings) == first
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "keys.json").read_text())["write_keys"] == list(first.write_keys)


def test_configured_keys_win(tmp_path: Path) -> None:
    configured = Settings(data_dir=tmp_path, write_keys=["wk_a", "wk_b"], admin_key="sk_x")
    keys = load_credentials(configured)
    assert keys.write_keys == {"wk_a", "wk_b"} and keys.admin_key == "sk_x"
    assert not (tmp_path / "keys.json").exists()


def test_source_id_does_not_reveal_the_key() -> None:
    assert source_id("wk_a") == source_id("wk_a") != source_id("wk_b")
    assert "wk_a" not in source_id("wk_a")
