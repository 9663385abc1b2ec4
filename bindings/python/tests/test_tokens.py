"""Tokens minted in Python, in docs/PROTOCOL.md's format, accepted (or
refused) by the real relay."""

import pytest

import concord
from concord.tokens import encode_claims, load_key, mint_token
from test_concord import await_synced, wait_for


def test_claims_encoding_matches_the_documented_layout():
    # varint(len) "todos", rights 1, expires_at 300 (varint ac 02), no replica.
    assert encode_claims("todos", "rw", 300) == b"\x05todos\x01\xac\x02\x00"
    assert encode_claims("r", "r", 1, replica=0x81) == b"\x01r\x00\x01\x01\x81\x01"
    with pytest.raises(ValueError):
        encode_claims("todos", "admin", 1)


def test_the_relay_accepts_a_python_minted_token(relay, tmp, opened):
    token = mint_token(load_key(relay.key_path), room="minted", rights="rw", ttl_seconds=3600)
    db = opened(str(tmp / "a.db"), relay=concord.Relay(relay.url, "minted", token))
    db.collection("todos").put("milk", {"title": "Buy milk"})
    db.flush()
    status = await_synced(db)
    assert status.last_error is None and not status.read_only


def test_a_read_token_makes_the_session_read_only(relay, tmp, opened):
    token = mint_token(load_key(relay.key_path), room="minted", rights="r")
    db = opened(str(tmp / "a.db"), relay=concord.Relay(relay.url, "minted", token))
    with db.status_changes() as statuses:
        wait_for(statuses, lambda s: s.connection == "online" and s.read_only)


def test_the_relay_refuses_a_token_signed_with_another_key(relay, tmp, opened):
    token = mint_token(bytes(32), room="minted", rights="rw")
    db = opened(str(tmp / "a.db"), relay=concord.Relay(relay.url, "minted", token))
    with db.status_changes() as statuses:
        stopped = wait_for(statuses, lambda s: s.last_error is not None)
    assert stopped.connection != "online"
    with pytest.raises(concord.Offline):
        db.collection("todos").put("milk", {"title": "Buy milk"})
        db.flush()
