"""A real Matrix client library (matrix-nio) drives porch end to end:
two users register, create a room, invite, join, talk, sync, paginate, leave.

Usage: python nio_scenario.py http://127.0.0.1:PORT
Exits non-zero (with an assertion message) on any deviation.
"""

import asyncio
import sys
import uuid

from nio import (
    AsyncClient,
    JoinResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomLeaveResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
    LoginResponse,
)


async def main(base: str) -> None:
    run = uuid.uuid4().hex[:8]
    alice = AsyncClient(base, f"alice{run}")
    bob = AsyncClient(base, f"bob{run}")
    try:
        resp = await alice.register(f"alice{run}", "alice-password-1")
        assert isinstance(resp, RegisterResponse), f"alice register: {resp}"
        resp = await bob.register(f"bob{run}", "bob-password-1")
        assert isinstance(resp, RegisterResponse), f"bob register: {resp}"

        # A fresh login works as well as the registration token.
        relog = AsyncClient(base, f"alice{run}")
        resp = await relog.login("alice-password-1")
        assert isinstance(resp, LoginResponse), f"login: {resp}"
        await relog.close()

        resp = await alice.room_create(name="nio room", topic="driven by matrix-nio")
        assert isinstance(resp, RoomCreateResponse), f"create: {resp}"
        room_id = resp.room_id

        resp = await alice.room_invite(room_id, bob.user_id)
        assert isinstance(resp, RoomInviteResponse), f"invite: {resp}"

        resp = await bob.sync(timeout=0)
        assert isinstance(resp, SyncResponse), f"bob sync: {resp}"
        assert room_id in resp.rooms.invite, f"bob sees no invite: {resp.rooms.invite.keys()}"

        resp = await bob.join(room_id)
        assert isinstance(resp, JoinResponse), f"join: {resp}"

        await alice.sync(timeout=0)
        for i in range(30):
            resp = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"hello {i}"})
            assert isinstance(resp, RoomSendResponse), f"send: {resp}"

        # Bob's incremental sync delivers the newest messages; the room is named.
        resp = await bob.sync(timeout=5000)
        assert isinstance(resp, SyncResponse), f"bob sync 2: {resp}"
        joined = resp.rooms.join[room_id]
        bodies = [e.body for e in joined.timeline.events if hasattr(e, "body")]
        assert "hello 29" in bodies, f"latest message missing: {bodies}"
        assert bob.rooms[room_id].display_name == "nio room", bob.rooms[room_id].display_name
        assert joined.timeline.limited, "30 messages exceed the default timeline limit"

        # Paginate backwards from the sync's prev_batch to the start.
        seen = set(bodies)
        token = joined.timeline.prev_batch
        for _ in range(20):
            resp = await bob.room_messages(room_id, start=token, limit=10)
            assert isinstance(resp, RoomMessagesResponse), f"messages: {resp}"
            seen.update(e.body for e in resp.chunk if hasattr(e, "body"))
            if not resp.end or not resp.chunk:
                break
            token = resp.end
        missing = [f"hello {i}" for i in range(30) if f"hello {i}" not in seen]
        assert not missing, f"pagination missed {missing}"

        # Bob replies; Alice receives it through a long-polling sync.
        resp = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi alice"})
        assert isinstance(resp, RoomSendResponse), f"bob send: {resp}"
        resp = await alice.sync(timeout=5000)
        got = [e.body for e in resp.rooms.join[room_id].timeline.events if hasattr(e, "body")]
        assert "hi alice" in got, f"alice missed bob's reply: {got}"

        resp = await bob.room_leave(room_id)
        assert isinstance(resp, RoomLeaveResponse), f"leave: {resp}"
        resp = await bob.sync(timeout=0)
        assert room_id in resp.rooms.leave, "bob's sync shows the room as left"
        print("nio scenario: OK")
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
