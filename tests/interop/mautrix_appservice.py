"""Interop: mautrix-python, the library the mautrix bridges are built on, runs
an application service (a bridge's) against the homeserver.

Usage: mautrix_appservice.py <homeserver base URL> <scratch dir>
       mautrix_appservice.py registration <server name> <out.yaml>
The first form prints "interop ok" and exits 0 on success, 1 with the failed
check otherwise; the requests mautrix made are in <scratch dir>/mautrix-requests.log.
The second writes a registration (with a free loopback port) for a homeserver
that is to load it at start, as Synapse does.

Environment:
  BRIDGE_REGISTRATION_MODE  admin-api (default): the registration is posted to
                            POST /_estuary/admin/v1/appservices by the first
                            registered user, who is a server admin on Estuary;
                            preloaded: the homeserver already has the one in
                            BRIDGE_REGISTRATION_FILE.
  BRIDGE_HOMESERVER         synapse: accept Synapse's behaviour where it knowingly
                            differs from Estuary's (see step f).

Steps, on a fresh server (the names below are fixed):
  a. a Matrix user registers (first account: the admin on Estuary)
  b. the appservice is registered (namespaces @mx_.* and #mx_.*, receive_ephemeral)
  c. mautrix starts as a bridge does (versions, bot registration, whoami, ping,
     media config), registers ghosts, gives one a name and avatar, creates a
     portal room with an m.bridge state event and the alias #mx_portal; the
     ghosts join and post with massaged timestamps (?ts=)
  d. the Matrix user joins by the alias, sees the ghosts' messages with their
     massaged timestamps and names, replies, types and sends a read receipt
  e. the appservice receives the reply, the join, the typing and the receipt
  f. user and alias queries: the appservice creates @mx_carol and #mx_dynamic
     on demand when the homeserver asks
  g. (done in c, where bridges do it) the appservice pings itself through
     the homeserver
"""

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import struct
import sys
import time
import traceback
import zlib
from urllib.parse import quote, urlsplit

import aiohttp
from mautrix.api import Method, Path
from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.types import EventType, MessageType, SpecVersions, TextMessageEventContent

RUN_SECONDS = 110  # the whole run; the suite allows 120
WAIT_SECONDS = 20  # for one thing to arrive in a transaction or a sync
HTTP_SECONDS = 30  # one HTTP request (a user query makes the homeserver wait on us)
PASSWORD = "interop password mautrix"
USER_LOCALPART = "bridgeuser"  # outside the exclusive @mx_ namespace
BOT_LOCALPART = "mxbot"
HOUR_MS = 3600 * 1000


class Failure(Exception):
    """A check that did not hold."""


def check(condition, message):
    if not condition:
        raise Failure(message)


last_progress = "none"


def step(name, message):
    global last_progress
    last_progress = f"{name}: {message}"
    print(f"mautrix {name}: {message}", flush=True)


def png():
    """A 2x2 RGB PNG, written by hand (no imaging library needed)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x00\xff\x00\x00\x00\xff\x00" * 2
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# --- The registration -------------------------------------------------------


def new_registration(server_name, port):
    server = re.escape(server_name)
    return {
        "id": "mautrix-interop",
        "url": f"http://127.0.0.1:{port}",
        "as_token": secrets.token_urlsafe(32),
        "hs_token": secrets.token_urlsafe(32),
        "sender_localpart": BOT_LOCALPART,
        "users_regex": f"@mx_.*:{server}",
        "aliases_regex": f"#mx_.*:{server}",
    }


def registration_yaml(reg):
    """The registration file, as bridges write it. Every string is written as
    a JSON string, which is also a YAML double-quoted scalar (the regexes
    hold backslashes and colons)."""
    q = json.dumps
    return (
        f"id: {q(reg['id'])}\n"
        f"url: {q(reg['url'])}\n"
        f"as_token: {q(reg['as_token'])}\n"
        f"hs_token: {q(reg['hs_token'])}\n"
        f"sender_localpart: {q(reg['sender_localpart'])}\n"
        "rate_limited: false\n"
        "receive_ephemeral: true\n"
        "namespaces:\n"
        "  users:\n"
        "    - exclusive: true\n"
        f"      regex: {q(reg['users_regex'])}\n"
        "  aliases:\n"
        "    - exclusive: true\n"
        f"      regex: {q(reg['aliases_regex'])}\n"
        "  rooms: []\n"
    )


def load_registration(path):
    from ruamel.yaml import YAML  # a heisenbridge dependency, in the bridge venv

    with open(path) as f:
        doc = YAML(typ="safe").load(f)
    return {
        "id": doc["id"],
        "url": doc["url"],
        "as_token": doc["as_token"],
        "hs_token": doc["hs_token"],
        "sender_localpart": doc["sender_localpart"],
        "users_regex": doc["namespaces"]["users"][0]["regex"],
        "aliases_regex": doc["namespaces"]["aliases"][0]["regex"],
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- The Matrix user, over plain HTTP ---------------------------------------


class Client:
    def __init__(self, session, base):
        self.session = session
        self.base = base.rstrip("/")
        self.token = None

    async def call(self, method, path, body=None, params=None, data=None, headers=None):
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        async with self.session.request(method, self.base + path, data=data, params=params, headers=headers) as r:
            text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    async def ok(self, method, path, body=None, **kwargs):
        status, reply = await self.call(method, path, body, **kwargs)
        check(status == 200, f"{method} {path} answered {status}: {str(reply)[:300]}")
        return reply


class RoomView:
    """Everything the Matrix user has seen of one room through /sync."""

    def __init__(self, client, room_id):
        self.client = client
        self.room_id = room_id
        self.events = []
        self.since = None

    async def sync_until(self, what, predicate):
        """Long-polls /sync (bounded) until predicate(events) holds."""
        deadline = time.monotonic() + WAIT_SECONDS
        # No lazy loading, and room for the whole short history in one go.
        sync_filter = json.dumps({"room": {"timeline": {"limit": 100}}})
        while True:
            params = {"filter": sync_filter, "timeout": "0" if self.since is None else "2000"}
            if self.since:
                params["since"] = self.since
            reply = await self.client.ok("GET", "/_matrix/client/v3/sync", params=params)
            self.since = reply["next_batch"]
            room = reply.get("rooms", {}).get("join", {}).get(self.room_id, {})
            self.events += room.get("state", {}).get("events", []) + room.get("timeline", {}).get("events", [])
            if predicate(self.events):
                return self.events
            check(time.monotonic() < deadline, f"/sync: no {what} in {WAIT_SECONDS} s")

    def find(self, **fields):
        """The last event whose top-level fields have these values."""
        found = [e for e in self.events if all(e.get(k) == v for k, v in fields.items())]
        return found[-1] if found else None


# --- The appservice ----------------------------------------------------------


class MemoryASStateStore(ASStateStore, MemoryStateStore):
    """Like heisenbridge's: nothing on disk (mautrix's default is a file in the cwd)."""

    def __init__(self):
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)


class RecordingAppService(AppService):
    """mautrix's AppService, also noting what the homeserver sent it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received = []  # every event and EDU, serialized back to JSON
        self.txn_keys = set()  # top-level keys of the transaction bodies
        self.pings = []
        self.queried_users = []
        self.queried_aliases = []
        self.matrix_event_handler(self._record)

    async def _record(self, event):
        self.received.append(event.serialize())

    async def _read_transaction_header(self, request):
        txn_id, data = await super()._read_transaction_header(request)
        self.txn_keys.update(data)
        return txn_id, data

    async def _http_ping(self, request):
        try:
            self.pings.append((await request.json()).get("transaction_id"))
        except ValueError:
            pass  # mautrix answers that one itself
        return await super()._http_ping(request)

    async def wait_for(self, what, predicate):
        """Waits (bounded) for an event or EDU the handlers received."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            for event in self.received:
                if predicate(event):
                    return event
            await asyncio.sleep(0.1)
        raise Failure(f"the appservice received no {what} in {WAIT_SECONDS} s")


class RequestLog(logging.Handler):
    """Collects the request lines mautrix logs at debug level ("req #N: ...")."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("req #"):
            self.lines.append(message[:400])


# --- The scenario ------------------------------------------------------------


async def run(base):
    mode = os.environ.get("BRIDGE_REGISTRATION_MODE", "admin-api")
    check(mode in ("admin-api", "preloaded"), f"unknown BRIDGE_REGISTRATION_MODE {mode}")
    synapse = os.environ.get("BRIDGE_HOMESERVER") == "synapse"
    timeout = aiohttp.ClientTimeout(total=HTTP_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        user = Client(session, base)

        # a. The Matrix user (first account: the admin on Estuary).
        reply = await user.ok("POST", "/_matrix/client/v3/register", {
            "username": USER_LOCALPART, "password": PASSWORD, "auth": {"type": "m.login.dummy"},
        })
        user.token, user_id = reply["access_token"], reply["user_id"]
        server = user_id.split(":", 1)[1]
        step("a", f"registered {user_id}")

        # b. The registration. With the admin API, the appservice listens first
        # (on a port the kernel picks), so that its URL is known.
        if mode == "preloaded":
            check(os.environ.get("BRIDGE_REGISTRATION_FILE"), "preloaded mode needs BRIDGE_REGISTRATION_FILE")
            reg = load_registration(os.environ["BRIDGE_REGISTRATION_FILE"])
            port = urlsplit(reg["url"]).port
        else:
            reg = new_registration(server, 0)
            port = 0
        for localpart in ("mx_alice", "mx_carol"):
            check(re.fullmatch(reg["users_regex"], f"@{localpart}:{server}"),
                  f"the registration's user namespace {reg['users_regex']} misses @{localpart}:{server}")

        az = RecordingAppService(
            server=base, domain=server, as_token=reg["as_token"], hs_token=reg["hs_token"],
            bot_localpart=reg["sender_localpart"], id=reg["id"], log="mau.as",
            state_store=MemoryASStateStore(), ephemeral_events=True,
        )
        dynamic_rooms = {}

        async def query_user(mxid):
            # The homeserver asks before the user exists: a bridge registers
            # the ghost and answers 200. mautrix answers 404 to a falsy result,
            # {} included, so the body is not empty (the homeserver ignores it).
            az.queried_users.append(mxid)
            if not mxid.startswith("@mx_carol:"):
                return None
            ghost = az.intent.user(mxid)
            await ghost.ensure_registered()
            await ghost.set_displayname("Carol (on demand)")
            return {"registered": mxid}

        async def query_alias(alias):
            # Same for an alias: the bridge creates the room with that alias.
            az.queried_aliases.append(alias)
            if not alias.startswith("#mx_dynamic:"):
                return None
            dynamic_rooms[alias] = await az.intent.create_room(alias_localpart="mx_dynamic", name="Dynamic portal")
            return {"created": dynamic_rooms[alias]}

        az.query_user = query_user
        az.query_alias = query_alias
        await az.start(host="127.0.0.1", port=port)
        try:
            port = az.runner.addresses[0][1]
            if mode == "admin-api":
                reg["url"] = f"http://127.0.0.1:{port}"
                reply = await user.ok("POST", "/_estuary/admin/v1/appservices", data=registration_yaml(reg),
                                      headers={"Content-Type": "application/yaml"})
                check(reply.get("id") == reg["id"], f"admin API answered {reply}, not id {reg['id']}")
            step("b", f"appservice {reg['id']} ({mode}) listening on 127.0.0.1:{port}")
            await scenario(az, user, user_id, server, dynamic_rooms, synapse)
        finally:
            # Bounded: aiohttp would wait up to 60 s for handlers still running.
            try:
                await asyncio.wait_for(az.stop(), 5)
            except (asyncio.TimeoutError, TimeoutError):
                print("mautrix: the appservice's server did not stop within 5 s", file=sys.stderr)


async def scenario(az, user, user_id, server, dynamic_rooms, synapse):
    bot = az.intent

    # c (and g). What a mautrix bridge does at start (mautrix.bridge.matrix
    # wait_for_connection): /versions, whoami (registering the bot if refused),
    # a ping through the homeserver, the media config.
    versions = await bot.versions()
    step("c", f"/versions: {[str(v) for v in versions.versions]}, unstable {sorted(versions.unstable_features)}")
    check(versions.supports_at_least(SpecVersions.V11), "mautrix bridges need Matrix v1.1 at least")
    await bot.ensure_registered()
    whoami = await bot.whoami()
    check(whoami.user_id == az.bot_mxid, f"whoami as the bot answered {whoami}")
    step("c", f"bot {az.bot_mxid} registered; whoami device_id={whoami.device_id}")

    # g. The ping (bridges call it when /versions has v1.7). Sent the way
    # IntentAPI.appservice_ping does, but keeping the reply: that helper turns
    # a duration of 0 ms into -1.
    txn_id = bot.api.get_txn_id()
    reply = await bot.api.request(Method.POST, Path.v1.appservice[az.id].ping, content={"transaction_id": txn_id})
    check(isinstance(reply.get("duration_ms"), int), f"ping answered {reply}, no duration_ms")
    check(txn_id in az.pings, f"the homeserver's ping to the appservice did not carry transaction_id {txn_id}")
    step("g", f"ping: duration_ms={reply['duration_ms']}, v1.7 advertised: {versions.supports_at_least(SpecVersions.V17)}")

    try:
        media_config = await bot.get_media_repo_config()
        step("c", f"media config: upload size {media_config.upload_size}")
    except Exception as e:  # bridges only log this
        step("c", f"warning: GET /_matrix/media/v3/config failed ({e}); bridges go on without it")

    # c. Ghosts, one with a name and avatar.
    alice = bot.user(f"@mx_alice:{server}")
    bob = bot.user(f"@mx_bob:{server}")
    await alice.ensure_registered()
    await bob.ensure_registered()
    avatar = png()
    mxc = await alice.upload_media(avatar, mime_type="image/png", filename="alice.png")
    await alice.set_displayname("Alice (bridged)")
    await alice.set_avatar_url(mxc)
    # Authenticated media (/_matrix/client/v1/media) when /versions has v1.11.
    check(await bot.download_media(mxc) == avatar, "the avatar downloaded by the bot differs")
    step("c", f"ghosts {alice.mxid}, {bob.mxid} registered; alice's avatar {mxc}")

    # c. The portal: m.bridge (MSC2346) in the initial state, an alias in the
    # namespace; alice gets power level 50 for the topic. From room version 12
    # on the creator's power is implicit and must not be listed (mautrix
    # 0.20.8 does not know that: it would count the bot at users_default and
    # refuse to send state as it; only alice sends state here).
    capabilities = await user.ok("GET", "/_matrix/client/v3/capabilities")
    version = capabilities["capabilities"]["m.room_versions"]["default"]
    levels = {alice.mxid: 50}
    if not (version.isdigit() and int(version) >= 12):
        levels[az.bot_mxid] = 100
    alias = f"#mx_portal:{server}"
    bridge_content = {
        "bridgebot": az.bot_mxid,
        "creator": az.bot_mxid,
        "protocol": {"id": "fakechat", "displayname": "FakeChat"},
        "channel": {"id": "portal", "displayname": "Portal"},
    }
    bridge_key = "net.estuary.interop://fakechat/portal"
    room_id = await bot.create_room(
        alias_localpart="mx_portal", name="FakeChat portal", invitees=[user_id],
        initial_state=[{"type": "m.bridge", "state_key": bridge_key, "content": bridge_content}],
        power_level_override={"users": levels},
    )
    # ensure_joined tries to join, is refused (invite-only), has the bot invite, joins.
    await alice.ensure_joined(room_id)
    await bob.ensure_joined(room_id)
    # Fetched as mautrix does when the levels did not come in a transaction
    # yet: GET .../state/m.room.power_levels/ (empty state key, trailing slash).
    pl = await alice.get_power_levels(room_id, ignore_cache=True)
    check(pl.get_user_level(alice.mxid) == 50, f"power levels read by alice: {pl.serialize()}")
    step("c", f"portal {room_id} ({alias}, room version {version}) created, ghosts joined")

    # c. Messages and a state event from the past (?ts=, for appservices only).
    past = int(time.time() * 1000) - HOUR_MS
    text = TextMessageEventContent(msgtype=MessageType.TEXT, body="hello from an hour ago")
    alice_event = await alice.send_message(room_id, text, timestamp=past)
    text = TextMessageEventContent(msgtype=MessageType.TEXT, body="bob, a second later")
    bob_event = await bob.send_message(room_id, text, timestamp=past + 1000)
    topic_event = await alice.send_state_event(room_id, EventType.ROOM_TOPIC, {"topic": "bridged topic"},
                                               timestamp=past + 2000)
    step("c", f"ghost messages and a topic sent with ts={past} (+1 s, +2 s)")

    # d. The Matrix user joins by the alias and reads it all.
    reply = await user.ok("POST", f"/_matrix/client/v3/join/{quote(alias, safe='')}", {})
    check(reply.get("room_id") == room_id, f"joining {alias} gave {reply}, not {room_id}")
    view = RoomView(user, room_id)
    await view.sync_until("topic from alice", lambda events: any(e.get("event_id") == topic_event for e in events))
    for event_id, sender, ts in ((alice_event, alice.mxid, past), (bob_event, bob.mxid, past + 1000),
                                 (topic_event, alice.mxid, past + 2000)):
        event = view.find(event_id=event_id)
        check(event and event["sender"] == sender, f"/sync: {event_id} from {sender} is {event}")
        check(event["origin_server_ts"] == ts, f"/sync: {event_id} has origin_server_ts "
              f"{event['origin_server_ts']}, not the massaged {ts}")
    check(view.find(event_id=alice_event)["content"]["body"] == "hello from an hour ago", "alice's body differs")
    member = view.find(type="m.room.member", state_key=alice.mxid)
    check(member and member["content"].get("displayname") == "Alice (bridged)"
          and member["content"].get("avatar_url") == mxc, f"/sync: alice's member event is {member}")
    bridge = view.find(type="m.bridge", state_key=bridge_key)
    check(bridge and bridge["content"] == bridge_content, f"/sync: m.bridge state is {bridge}")
    profile = await user.ok("GET", f"/_matrix/client/v3/profile/{quote(alice.mxid, safe='')}")
    check(profile.get("displayname") == "Alice (bridged)" and profile.get("avatar_url") == mxc,
          f"alice's profile is {profile}")
    step("d", "the user joined by alias and saw the massaged timestamps, alice's name and avatar, m.bridge")

    room = quote(room_id, safe="")
    txn = secrets.token_hex(8)
    reply = await user.ok("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
                          {"msgtype": "m.text", "body": "reply from Matrix"})
    reply_event = reply["event_id"]
    await user.ok("PUT", f"/_matrix/client/v3/rooms/{room}/typing/{quote(user_id, safe='')}",
                  {"typing": True, "timeout": 30000})
    await user.ok("POST", f"/_matrix/client/v3/rooms/{room}/receipt/m.read/{quote(bob_event, safe='')}", {})
    step("d", f"the user replied ({reply_event}), typed and read bob's message")

    # e. What the appservice got in its transactions.
    got = await az.wait_for("reply from the user", lambda e: e.get("event_id") == reply_event)
    check(got["type"] == "m.room.message" and got["sender"] == user_id and got["room_id"] == room_id
          and got["content"].get("body") == "reply from Matrix", f"the reply arrived as {got}")
    await az.wait_for("join of the user", lambda e: e.get("type") == "m.room.member" and e.get("room_id") == room_id
                      and e.get("state_key") == user_id and e["content"].get("membership") == "join")
    await az.wait_for("m.typing", lambda e: e.get("type") == "m.typing" and e.get("room_id") == room_id
                      and user_id in e["content"].get("user_ids", []))
    await az.wait_for("m.receipt", lambda e: e.get("type") == "m.receipt" and e.get("room_id") == room_id
                      and user_id in e["content"].get(bob_event, {}).get("m.read", {}))
    # mautrix reads the EDUs from "ephemeral", else "de.sorunome.msc2409.ephemeral".
    step("e", f"the appservice received the reply, the join, m.typing and m.receipt "
              f"(transaction keys: {sorted(az.txn_keys)})")

    # f. A user query: the profile of a ghost nobody registered yet.
    carol = f"@mx_carol:{server}"
    status, profile = await user.call("GET", f"/_matrix/client/v3/profile/{quote(carol, safe='')}")
    asked = carol in az.queried_users
    if status == 200 and asked and profile.get("displayname") == "Carol (on demand)":
        step("f", f"profile lookup of {carol}: the homeserver asked the appservice, which registered her")
    elif synapse and not asked:
        # Synapse queries users only when an event it pushes to the appservice
        # names one it does not know; a profile lookup is a plain 404.
        step("f", f"profile lookup of {carol} answered {status} without a user query (Synapse: lenient; "
                  f"users queried: {az.queried_users})")
    else:
        raise Failure(f"profile lookup of {carol} answered {status} {profile}; "
                      f"the appservice was asked about {az.queried_users}")

    # f. An alias query: resolving an alias nobody created yet.
    dynamic = f"#mx_dynamic:{server}"
    reply = await user.ok("GET", f"/_matrix/client/v3/directory/room/{quote(dynamic, safe='')}")
    check(dynamic in az.queried_aliases, f"the appservice was not asked about {dynamic} ({az.queried_aliases})")
    check(reply.get("room_id") == dynamic_rooms.get(dynamic),
          f"{dynamic} resolved to {reply}, the appservice created {dynamic_rooms.get(dynamic)}")
    step("f", f"{dynamic} resolved to {reply['room_id']}, created by the appservice when queried")


def main(argv):
    if len(argv) == 4 and argv[1] == "registration":
        reg = new_registration(argv[2], free_port())
        with open(argv[3], "w") as f:
            f.write(registration_yaml(reg))
        return 0
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    base, scratch = argv[1], argv[2]
    os.makedirs(scratch, exist_ok=True)
    # mautrix's own warnings and handler exceptions to stderr; its debug
    # request lines to the request log only.
    stderr = logging.StreamHandler()
    stderr.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, handlers=[stderr])
    requests = RequestLog()
    logging.getLogger("mau").addHandler(requests)
    logging.getLogger("mau").setLevel(logging.DEBUG)
    log_path = os.path.join(scratch, "mautrix-requests.log")
    started = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run(base), RUN_SECONDS))
    except BaseException as e:
        if isinstance(e, Failure):
            reason = str(e)
        elif isinstance(e, (asyncio.TimeoutError, TimeoutError)):
            reason = f"timed out ({RUN_SECONDS} s)"
        else:
            traceback.print_exc()
            reason = f"{type(e).__name__}: {e}"
        print(f"mautrix FAILED: {reason}\n  last progress line: {last_progress[:200]}", file=sys.stderr)
        if requests.lines:
            print("  last requests by mautrix (all in mautrix-requests.log):\n    "
                  + "\n    ".join(requests.lines[-12:]), file=sys.stderr)
        return 1
    finally:
        with open(log_path, "w") as f:
            f.write("\n".join(requests.lines) + "\n")
    print(f"interop ok: mautrix appservice ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
