"""matrix-nio with end-to-end encryption (vodozemac) across two porch servers:
Alice on the first server makes an encrypted room and invites Bob of the
second; both exchange device keys (keys/query over federation), Alice claims
Bob's one-time key (keys/claim over federation) and shares her Megolm
session as an Olm-encrypted to-device message (m.direct_to_device over
federation); Bob decrypts her message, and Alice decrypts his reply.

Usage: python nio_e2ee_federation.py http://A http://B STORE_DIR
Exits non-zero (with an assertion message) on any deviation.
"""

import asyncio
import os
import sys
import time
import uuid

from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    JoinResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


async def make_client(base: str, name: str, store: str) -> AsyncClient:
    path = os.path.join(store, name)
    os.makedirs(path, exist_ok=True)
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = AsyncClient(base, name, store_path=path, config=config)
    resp = await client.register(name, f"{name}-password-1", device_name=f"{name}'s nio")
    assert isinstance(resp, RegisterResponse), f"{name} register: {resp}"
    # register() does not load the store; logging in state does.
    client.restore_login(resp.user_id, resp.device_id, resp.access_token)
    await sync(client)
    return client


async def sync(client: AsyncClient, timeout: int = 0) -> SyncResponse:
    resp = await client.sync(timeout=timeout)
    assert isinstance(resp, SyncResponse), f"{client.user_id} sync: {resp}"
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    return resp


async def until(client: AsyncClient, what: str, check, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        resp = await sync(client, timeout=1000)
        found = check(resp)
        if found:
            return found
    raise AssertionError(f"{what}: not seen by {client.user_id} within {seconds} s")


def reader(client: AsyncClient, room_id: str, wanted: str):
    """A check for `until`: the room's messages, decrypted. An event that
    arrives before its room key is kept and decrypted once the key is in."""
    pending = []

    def check(resp: SyncResponse) -> bool:
        room = resp.rooms.join.get(room_id)
        events = list(room.timeline.events) if room else []
        pending.extend(e for e in events if isinstance(e, MegolmEvent))
        plain = [e.body for e in events if isinstance(e, RoomMessageText)]
        for event in list(pending):
            try:
                decrypted = client.decrypt_event(event)
            except Exception:  # noqa: BLE001 - the key has not arrived yet
                continue
            pending.remove(event)
            if isinstance(decrypted, RoomMessageText):
                plain.append(decrypted.body)
        return wanted in plain

    return check


async def main(base_a: str, base_b: str, store: str) -> None:
    run = uuid.uuid4().hex[:8]
    alice = await make_client(base_a, f"alice{run}", store)
    bob = await make_client(base_b, f"bob{run}", store)
    try:
        assert alice.olm is not None and bob.olm is not None, "encryption is not enabled in nio (vodozemac missing?)"
        resp = await alice.room_create(name="secret plans", initial_state=[ENCRYPTION])
        assert isinstance(resp, RoomCreateResponse), f"create: {resp}"
        room_id = resp.room_id
        resp = await alice.room_invite(room_id, bob.user_id)
        assert isinstance(resp, RoomInviteResponse), f"invite over federation: {resp}"

        await until(bob, "the invite", lambda r: room_id in r.rooms.invite)
        resp = await bob.join(room_id)
        assert isinstance(resp, JoinResponse), f"bob joins over federation: {resp}"
        await sync(bob)
        assert bob.rooms[room_id].encrypted, "the room is encrypted on Bob's server too"

        def bob_joined(r):
            room = r.rooms.join.get(room_id)
            return room and any(
                getattr(e, "membership", None) == "join" and e.state_key == bob.user_id
                for e in room.timeline.events
                if not isinstance(e, InviteMemberEvent)
            )

        await until(alice, "Bob's join", bob_joined)
        # Alice learns Bob's device through her server asking his (sync()
        # queries keys whenever nio says it should).
        await sync(alice)
        assert bob.device_id in alice.device_store[bob.user_id], (
            f"Bob's device not known to Alice: {list(alice.device_store.users)}"
        )

        resp = await alice.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": "the password is swordfish"},
            ignore_unverified_devices=True,
        )
        assert isinstance(resp, RoomSendResponse), f"alice's encrypted send: {resp}"

        await until(bob, "Alice's message, decrypted", reader(bob, room_id, "the password is swordfish"))

        await sync(bob)
        resp = await bob.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": "noted, alice"},
            ignore_unverified_devices=True,
        )
        assert isinstance(resp, RoomSendResponse), f"bob's encrypted send: {resp}"

        await until(alice, "Bob's reply, decrypted", reader(alice, room_id, "noted, alice"))
        print("nio e2ee federation: OK")
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
