from pathlib import Path

import pytest

from kitty_coreml.errors import InvalidRequest, NotFound
from kitty_coreml.storage import resolve_ref
from kitty_coreml.storage.local import LocalStore


def _publish(store: LocalStore, tmp_path: Path, key: str) -> None:
    png, sidecar = tmp_path / "x.png", tmp_path / "x.json"
    png.write_bytes(b"png")
    sidecar.write_text("{}")
    store.publish(key, png, sidecar)


def test_newest_first_with_limit(tmp_path):
    store = LocalStore(tmp_path / "root", "images/")
    for key in ["images/20260101_000000_aaaaaaaa.png", "images/20261231_235959_bbbbbbbb.png",
                "images/20260601_120000_cccccccc.png"]:
        _publish(store, tmp_path, key)
    assert [i["key"] for i in store.list(2)] == ["images/20261231_235959_bbbbbbbb.png",
                                                 "images/20260601_120000_cccccccc.png"]
    assert resolve_ref(store, "3", "images/") == "images/20260101_000000_aaaaaaaa.png"
    assert resolve_ref(store, "20260101_000000_aaaaaaaa.png", "images/") == "images/20260101_000000_aaaaaaaa.png"
    assert store.read_sidecar("images/20260101_000000_aaaaaaaa.png") == {}
    assert not list(tmp_path.glob("root/images/.*")), "no temporary files left"


@pytest.mark.parametrize("key", ["other/x.png", "images/../x.png", "images/a/b.png", "images/x.json", "images/.png"])
def test_keys_outside_prefix_refused(tmp_path, key):
    with pytest.raises(InvalidRequest):
        LocalStore(tmp_path, "images/").select(key)


def test_select_missing(tmp_path):
    with pytest.raises(NotFound):
        LocalStore(tmp_path, "images/").select("images/20260101_000000_aaaaaaaa.png")


def test_keys_made_within_one_second_sort_in_order():
    from datetime import datetime, timezone

    from kitty_coreml.storage.base import new_key

    base = datetime(2026, 11, 21, 10, 15, 0, tzinfo=timezone.utc)
    keys = [new_key("images/", base.replace(microsecond=us)) for us in (0, 20, 500_000, 999_999)]
    assert keys == sorted(keys)
    assert all(len(k) == len("images/20261121_101500_abcd1234.png") for k in keys)
