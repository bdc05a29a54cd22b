"""Interop: two matrix-nio clients (with vodozemac) exchange encrypted messages.

Usage: nio_e2ee.py <homeserver base URL> <scratch dir>
Exits 0 when each user decrypted the other's message, non-zero otherwise.
"""

import asyncio
import os
import sys

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
)

PASSWORD = "interop password 1"
DEADLINE_SECONDS = 60


async def make_client(base, scratch, name):
    store = os.path.join(scratch, name)
    os.makedirs(store, exist_ok=True)
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = AsyncClient(base, name, store_path=store, config=config)
    registered = await client.register(name, PASSWORD)
    assert isinstance(registered, RegisterResponse), f"register {name}: {registered}"
    logged_in = await client.login(PASSWORD, device_name=f"{name}-nio")
    assert isinstance(logged_in, LoginResponse), f"login {name}: {logged_in}"
    received = []
    undecryptable = []

    async def on_text(room, event):
        received.append((room.room_id, event.sender, event.body, event.decrypted))

    async def on_megolm(room, event):
        undecryptable.append(event.session_id)

    client.add_event_callback(on_text, RoomMessageText)
    client.add_event_callback(on_megolm, MegolmEvent)
    client.received = received
    client.undecryptable = undecryptable
    await sync(client)
    return client


async def sync(client):
    response = await client.sync(timeout=500, full_state=False)
    assert not hasattr(response, "status_code") or response.transport_response.status == 200, response
    if client.should_upload_keys:
        uploaded = await client.keys_upload()
        assert not hasattr(uploaded, "status_code"), f"keys_upload: {uploaded}"
    if client.should_query_keys:
        await client.keys_query()
    return response


async def sync_until(client, predicate, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{client.user_id}: timed out waiting for {what}; undecryptable: {client.undecryptable}")
        await sync(client)


async def send_encrypted(client, room_id, body):
    # Make sure nio knows the room's members and their devices first.
    await client.joined_members(room_id)
    if client.should_query_keys:
        await client.keys_query()
    response = await client.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": body},
        ignore_unverified_devices=True,
    )
    assert isinstance(response, RoomSendResponse), f"room_send: {response}"


def got(client, room_id, sender, body):
    return any(r == room_id and s == sender and b == body and decrypted for r, s, b, decrypted in client.received)


async def main(base, scratch):
    alice = await make_client(base, scratch, "alice")
    bob = await make_client(base, scratch, "bob")
    try:
        created = await alice.room_create(
            name="secret",
            invite=[bob.user_id],
            initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        )
        assert isinstance(created, RoomCreateResponse), f"room_create: {created}"
        room_id = created.room_id
        await sync_until(bob, lambda: room_id in bob.invited_rooms, "the invite")
        joined = await bob.join(room_id)
        assert not hasattr(joined, "status_code"), f"join: {joined}"
        await sync_until(bob, lambda: room_id in bob.rooms and bob.rooms[room_id].encrypted, "the encrypted room")
        await sync_until(alice, lambda: room_id in alice.rooms and bob.user_id in alice.rooms[room_id].users, "bob's join")

        await send_encrypted(alice, room_id, "hello bob, this is secret")
        await sync_until(bob, lambda: got(bob, room_id, alice.user_id, "hello bob, this is secret"), "alice's message")

        await send_encrypted(bob, room_id, "hi alice, secret received")
        await sync_until(alice, lambda: got(alice, room_id, bob.user_id, "hi alice, secret received"), "bob's reply")
        print("interop ok: both messages decrypted")
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
