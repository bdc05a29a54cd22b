"""Interop: end-to-end encryption across federation, with matrix-nio.

    python nio_federation_e2ee.py URL_A SERVER_NAME_A URL_B SERVER_NAME_B CA.pem SCRATCH_DIR \
        [--timeout 150] [--extended] [--verbose]

Run with the Python of the nio venv (matrix-nio[e2e]); federation_env.py sets
up the servers and CA.pem, the CA both servers' certificates chain to (the
clients trust it alone). alice registers on A and bob on B, each with a nio
device whose Olm store lives under SCRATCH_DIR, then:

  1. alice registers on A, bob on B; both upload device and one-time keys
  2. alice creates an encrypted room on A and invites bob; bob joins via A
  3. alice learns bob's device keys (A fetches them from B) and sends an
     encrypted message; bob decrypts it: the megolm room key reached him as
     an Olm-encrypted to-device message, which A forwards to B as an
     m.direct_to_device EDU after claiming one of bob's one-time keys from B
  4. bob learns alice's device keys (B fetches them from A) and replies
     encrypted over the Olm session alice opened (no claim this way); alice
     decrypts the reply

Besides the room federation (invite, make_join, send_join, /send) the plain
scenario covers, this exercises /_matrix/federation/v1/user/keys/claim (A
claims a one-time key of bob's device from B), the m.direct_to_device EDU
(each room key, both ways) and, for device keys, whatever the servers use:
Synapse fetches the device list of a user it shares a room with by
/user/devices (both ways) and keeps it; /user/keys/query is what it asks
about users it shares no room with.

--extended adds two checks for the rest of the device-key federation:

  1. (also) before they share a room, alice queries bob's keys, which A can
     only answer by asking B (/user/keys/query)
  5. bob logs in a second device; B tells A (an m.device_list_update EDU),
     alice sees bob in her sync's device_lists.changed and learns the device

One line is printed per step and "interop ok" at the end; the exit code is 1
at the first failure or when the run's deadline (--timeout) passes.
Registration follows the user-interactive auth flows the server offers
(m.login.dummy, or m.login.registration_token with $REGISTRATION_TOKEN) over
plain HTTP; nio then logs in, so that each user's only device is its own.
"""

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinedMembersResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomKeyEvent,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.exceptions import EncryptionError

# One wait for something to arrive over federation; the run has its own
# overall deadline (--timeout), which cuts every wait to what is left.
WAIT_SECONDS = 60
# Long-poll timeout of each /sync.
SYNC_TIMEOUT_MS = 2000
# Seconds one plain HTTP request (registration, join) may take.
HTTP_TIMEOUT = 30


class Failure(Exception):
    """A check that did not hold, or a request that was refused."""


class Deadline:
    """The run's overall time budget."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def cap(self, seconds):
        left = self.end - time.monotonic()
        if left <= 0:
            raise Failure("the run's overall deadline has passed")
        return min(seconds, left)


def quote(s):
    return urllib.parse.quote(s, safe="")


def _json(raw):
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        return {"unparsed": raw[:500].decode(errors="replace")}


def http(method, url, body, ssl_context, token=None, timeout=HTTP_TIMEOUT):
    """A blocking client API request: (status, JSON answer); 4xx and 5xx are
    answers, not exceptions, so that callers can handle UIA's 401."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, context=ssl_context, timeout=timeout) as r:
            return r.status, _json(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _json(e.read())
    except OSError as e:
        raise Failure(f"{method} {url}: {e}") from e


def _next_auth_stage(answer):
    """The auth dict for the next stage of the first flow we can complete."""
    token = os.environ.get("REGISTRATION_TOKEN")
    doable = {"m.login.dummy"} | ({"m.login.registration_token"} if token else set())
    completed = set(answer.get("completed", []))
    for flow in answer["flows"]:
        stages = flow.get("stages", [])
        if not set(stages) <= doable:
            continue
        stage = next(s for s in stages if s not in completed)
        auth = {"type": stage}
        if "session" in answer:
            auth["session"] = answer["session"]
        if stage == "m.login.registration_token":
            auth["token"] = token
        return auth
    raise Failure(f"no registration flow we can complete: {answer['flows']} "
                  "(set REGISTRATION_TOKEN for m.login.registration_token)")


def register(base, localpart, password, ssl_context, deadline):
    """Registers localpart through whatever UIA flow the server offers; no
    device is made (inhibit_login): nio logs in afterwards. Returns the user ID."""
    url = base.rstrip("/") + "/_matrix/client/v3/register"
    body = {"username": localpart, "password": password, "inhibit_login": True}
    for _ in range(5):
        status, answer = http("POST", url, body, ssl_context, timeout=deadline.cap(HTTP_TIMEOUT))
        if status == 200:
            return answer["user_id"]
        if status != 401 or "flows" not in answer:
            raise Failure(f"register {localpart} at {base}: {status} {answer}")
        body["auth"] = _next_auth_stage(answer)
    raise Failure(f"register {localpart} at {base}: UIA did not finish")


class User:
    """A nio client with an Olm store, and what its syncs delivered."""

    def __init__(self, label, base, server_name, client, deadline, ssl_context):
        self.label = label
        self.base = base.rstrip("/")
        self.server_name = server_name
        self.client = client
        self.deadline = deadline
        self.ssl_context = ssl_context
        self.texts = []  # (room_id, sender, body, decrypted)
        self.undecrypted = []  # MegolmEvents nio could not decrypt when they came
        self.late_decrypted = 0  # of those, decrypted once their key arrived
        self.room_keys = []  # (sender, room_id, session_id) of m.room_key to-device events
        self.device_changes = set()  # users in any sync's device_lists.changed
        self.password = None
        client.add_event_callback(self._on_text, RoomMessageText)
        client.add_event_callback(self._on_megolm, MegolmEvent)
        client.add_to_device_callback(self._on_room_key, RoomKeyEvent)

    @property
    def user_id(self):
        return self.client.user_id

    @property
    def device_id(self):
        return self.client.device_id

    async def _on_text(self, room, event):
        self.texts.append((room.room_id, event.sender, event.body, event.decrypted))

    async def _on_megolm(self, room, event):
        # nio hands over an event it could not decrypt as MegolmEvent: usually
        # the room key has not arrived (yet). retry_undecrypted() tries again.
        event.room_id = room.room_id
        self.undecrypted.append(event)

    async def _on_room_key(self, event):
        self.room_keys.append((event.sender, event.room_id, event.session_id))

    def retry_undecrypted(self):
        """Decrypts the events whose room key came after them (the room event
        and the to-device message travel separately over federation)."""
        still = []
        for event in self.undecrypted:
            try:
                decrypted = self.client.decrypt_event(event)
            except EncryptionError:
                still.append(event)
                continue
            if isinstance(decrypted, RoomMessageText):
                self.late_decrypted += 1
                self.texts.append((event.room_id, decrypted.sender, decrypted.body, True))
        self.undecrypted = still

    async def sync(self, timeout_ms=SYNC_TIMEOUT_MS):
        """One /sync, then whatever key maintenance nio asks for."""
        timeout_ms = int(min(timeout_ms, self.deadline.cap(WAIT_SECONDS) * 1000))
        response = await self.client.sync(timeout=timeout_ms, full_state=False)
        if not isinstance(response, SyncResponse):
            raise Failure(f"{self.user_id}: sync: {response}")
        self.device_changes.update(response.device_list.changed)
        await self.upload_keys_if_needed()
        if self.client.should_query_keys:
            queried = await self.client.keys_query()
            if not isinstance(queried, KeysQueryResponse):
                raise Failure(f"{self.user_id}: keys/query: {queried}")
        self.retry_undecrypted()
        return response

    async def upload_keys_if_needed(self):
        if self.client.should_upload_keys:
            uploaded = await self.client.keys_upload()
            if not isinstance(uploaded, KeysUploadResponse):
                raise Failure(f"{self.user_id}: keys/upload: {uploaded}")

    async def sync_until(self, predicate, what, seconds=WAIT_SECONDS):
        end = time.monotonic() + self.deadline.cap(seconds)
        while not predicate():
            if time.monotonic() > end:
                raise Failure(f"{self.user_id} did not see {what} within {seconds} s"
                              f" (undecryptable megolm events: {len(self.undecrypted)};"
                              f" room keys received: {self.room_keys})")
            await self.sync()

    def knows_device(self, user_id, device_id):
        return any(d.id == device_id for d in self.client.device_store.active_user_devices(user_id))

    async def learn_device(self, other, seconds=WAIT_SECONDS):
        """Makes sure nio holds other's device keys, so that the room key is
        shared with it. nio queries the users of its encrypted rooms on its
        own; if an answer lacked the device (the remote server was not
        reachable yet, say), the user is queried again after each sync.
        Returns how many key queries were forced."""
        forced = 0
        end = time.monotonic() + self.deadline.cap(seconds)
        while not self.knows_device(other.user_id, other.device_id):
            if time.monotonic() > end:
                raise Failure(f"{self.user_id} did not learn {other.user_id}'s device "
                              f"{other.device_id} within {seconds} s; known: "
                              f"{[d.id for d in self.client.device_store.active_user_devices(other.user_id)]}")
            if not self.client.should_query_keys:
                if forced:
                    await asyncio.sleep(0.5)
                self.client.olm.users_for_key_query.add(other.user_id)
                forced += 1
            queried = await self.client.keys_query()
            if not isinstance(queried, KeysQueryResponse):
                raise Failure(f"{self.user_id}: keys/query: {queried}")
            if queried.failures:
                print(f"  {self.label}: keys/query failures: {queried.failures}", flush=True)
            if not self.knows_device(other.user_id, other.device_id):
                await self.sync()
        return forced

    async def send_encrypted(self, room_id, body):
        """room_send shares a megolm session with the room's devices first
        (claiming one-time keys for new Olm sessions), then sends."""
        members = await self.client.joined_members(room_id)
        if not isinstance(members, JoinedMembersResponse):
            raise Failure(f"{self.user_id}: joined_members: {members}")
        response = await self.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True,
        )
        if not isinstance(response, RoomSendResponse):
            raise Failure(f"{self.user_id}: room_send: {response}")
        return response.event_id

    def got(self, room_id, sender, body):
        return any(r == room_id and s == sender and b == body and decrypted
                   for r, s, b, decrypted in self.texts)

    async def join_via(self, room_id, via):
        """Joins by room ID through server `via` (nio's join cannot name one):
        `via` is the current parameter, `server_name` the pre-1.12 one."""
        query = urllib.parse.urlencode({"via": via, "server_name": via})
        url = f"{self.base}/_matrix/client/v3/join/{quote(room_id)}?{query}"
        status, answer = await asyncio.to_thread(
            http, "POST", url, {}, self.ssl_context, self.client.access_token,
            self.deadline.cap(HTTP_TIMEOUT))
        if status != 200 or answer.get("room_id") != room_id:
            raise Failure(f"{self.user_id}: join {room_id} via {via}: {status} {answer}")


def _client_config():
    return AsyncClientConfig(
        encryption_enabled=True,
        store_sync_tokens=True,
        request_timeout=HTTP_TIMEOUT,
        max_timeouts=1,
        max_limit_exceeded=3,
    )


async def login_device(label, base, server_name, user_id, password, store, ssl_context,
                       deadline, device_name):
    """A new nio device (a login) of an existing user, with its keys uploaded."""
    os.makedirs(store, exist_ok=True)
    client = AsyncClient(base, user_id, store_path=store, config=_client_config(), ssl=ssl_context)
    user = User(label, base, server_name, client, deadline, ssl_context)
    user.password = password
    try:
        logged_in = await client.login(password, device_name=device_name)
        if not isinstance(logged_in, LoginResponse):
            raise Failure(f"login {user_id}: {logged_in}")
        await user.upload_keys_if_needed()
        await user.sync(timeout_ms=0)
    except BaseException:
        await client.close()
        raise
    return user


async def make_user(label, base, server_name, localpart, scratch, ssl_context, deadline):
    password = uuid.uuid4().hex
    user_id = await asyncio.to_thread(register, base, localpart, password, ssl_context, deadline)
    return await login_device(label, base, server_name, user_id, password,
                              os.path.join(scratch, localpart), ssl_context, deadline,
                              f"{localpart}-nio")


async def scenario(args, ssl_context, deadline):
    tag = uuid.uuid4().hex[:6]  # unique names: reruns against the same servers work
    users = []
    try:
        started = time.monotonic()
        print("step 1: alice registers on A, bob on B; both upload keys", flush=True)
        alice = await make_user("alice", args.url_a, args.server_name_a, f"alice-{tag}",
                                args.scratch, ssl_context, deadline)
        users.append(alice)
        bob = await make_user("bob", args.url_b, args.server_name_b, f"bob-{tag}",
                              args.scratch, ssl_context, deadline)
        users.append(bob)
        print(f"  alice is {alice.user_id} (device {alice.device_id}), "
              f"bob is {bob.user_id} (device {bob.device_id})", flush=True)
        if args.extended:
            # No room is shared yet, so A has no copy of bob's device list and
            # must ask B (/user/keys/query). learn_device forces the query:
            # nio only queries users of its encrypted rooms by itself.
            await alice.learn_device(bob)
            print(f"  alice queried bob's keys before sharing a room: device {bob.device_id}",
                  flush=True)
        print(f"step 1 ok ({time.monotonic() - started:.1f} s)", flush=True)

        started = time.monotonic()
        print("step 2: alice creates an encrypted room on A and invites bob; bob joins via A",
              flush=True)
        created = await alice.client.room_create(
            name="secret " + tag,
            invite=[bob.user_id],
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        )
        if not isinstance(created, RoomCreateResponse):
            raise Failure(f"room_create: {created}")
        room_id = created.room_id
        print(f"  alice created {room_id}", flush=True)
        await bob.sync_until(lambda: room_id in bob.client.invited_rooms, "alice's invite")
        await bob.join_via(room_id, args.server_name_a)
        await bob.sync_until(
            lambda: room_id in bob.client.rooms and bob.client.rooms[room_id].encrypted,
            "the encrypted room")
        await alice.sync_until(
            lambda: room_id in alice.client.rooms and bob.user_id in alice.client.rooms[room_id].users,
            "bob's join")
        print(f"step 2 ok ({time.monotonic() - started:.1f} s)", flush=True)

        started = time.monotonic()
        print("step 3: alice sends an encrypted message; bob decrypts it", flush=True)
        forced = await alice.learn_device(bob)
        print(f"  alice knows bob's device {bob.device_id}"
              + (f" (after {forced} forced key queries)" if forced else ""), flush=True)
        text = f"hello bob, this is secret {tag}"
        event_id = await alice.send_encrypted(room_id, text)
        print(f"  alice sent {event_id}", flush=True)
        await bob.sync_until(lambda: bob.got(room_id, alice.user_id, text), "alice's message")
        print(f"  bob decrypted it; room keys received: {len(bob.room_keys)}"
              + (f"; {bob.late_decrypted} decrypted after their key arrived"
                 if bob.late_decrypted else ""), flush=True)
        print(f"step 3 ok ({time.monotonic() - started:.1f} s)", flush=True)

        started = time.monotonic()
        print("step 4: bob replies encrypted; alice decrypts it", flush=True)
        forced = await bob.learn_device(alice)
        print(f"  bob knows alice's device {alice.device_id}"
              + (f" (after {forced} forced key queries)" if forced else ""), flush=True)
        text = f"hi alice, secret received {tag}"
        event_id = await bob.send_encrypted(room_id, text)
        print(f"  bob sent {event_id}", flush=True)
        await alice.sync_until(lambda: alice.got(room_id, bob.user_id, text), "bob's reply")
        print(f"  alice decrypted it; room keys received: {len(alice.room_keys)}"
              + (f"; {alice.late_decrypted} decrypted after their key arrived"
                 if alice.late_decrypted else ""), flush=True)
        print(f"step 4 ok ({time.monotonic() - started:.1f} s)", flush=True)

        if args.extended:
            started = time.monotonic()
            print("step 5: bob logs in a second device; alice is told and learns it", flush=True)
            alice.device_changes.clear()
            bob2 = await login_device("bob2", args.url_b, args.server_name_b, bob.user_id,
                                      bob.password, os.path.join(args.scratch, f"bob-{tag}-2"),
                                      ssl_context, deadline, f"bob-{tag}-nio-2")
            users.append(bob2)
            print(f"  bob's second device is {bob2.device_id}", flush=True)
            # The change reaches A as an m.device_list_update EDU; A lists bob
            # in alice's device_lists.changed, and nio queries his keys again.
            await alice.sync_until(lambda: bob.user_id in alice.device_changes,
                                   "bob in device_lists.changed")
            await alice.sync_until(lambda: alice.knows_device(bob.user_id, bob2.device_id),
                                   f"bob's new device {bob2.device_id} in a key query")
            print(f"step 5 ok ({time.monotonic() - started:.1f} s)", flush=True)
    finally:
        for user in users:
            await user.client.close()


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url_a")
    parser.add_argument("server_name_a")
    parser.add_argument("url_b")
    parser.add_argument("server_name_b")
    parser.add_argument("ca", help="PEM file of the CA both servers' certificates chain to")
    parser.add_argument("scratch", help="directory for the clients' Olm stores")
    parser.add_argument("--timeout", type=float, default=150, help="seconds for the whole run")
    parser.add_argument("--extended", action="store_true",
                        help="also check /user/keys/query and m.device_list_update (steps 1 and 5)")
    parser.add_argument("--verbose", action="store_true", help="log nio's warnings and info")
    args = parser.parse_args(argv)
    # nio warns about what it handles itself ("Missing session for device"
    # before it claims a one-time key); --verbose shows that, to stderr.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.makedirs(args.scratch, exist_ok=True)
    # Trusts the test CA alone (a cafile means no system CAs are loaded).
    ssl_context = ssl.create_default_context(cafile=args.ca)
    deadline = Deadline(args.timeout)
    run_started = time.monotonic()

    async def bounded():
        # The deadline caps every wait; wait_for also stops a request that hangs.
        await asyncio.wait_for(scenario(args, ssl_context, deadline), args.timeout + 5)

    try:
        asyncio.run(bounded())
    except Failure as e:
        print(f"FAILED: {e}", flush=True)
        return 1
    except (asyncio.TimeoutError, TimeoutError):
        print(f"FAILED: the run did not finish within {args.timeout:.0f} s", flush=True)
        return 1
    except Exception as e:  # e.g. a connection error, or an answer nio could not parse
        traceback.print_exc()
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    steps = 5 if args.extended else 4
    print(f"{steps} steps in {time.monotonic() - run_started:.1f} s", flush=True)
    print("interop ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
