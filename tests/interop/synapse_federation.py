"""Federation scenario between two homeservers, driven over their client APIs.

    python synapse_federation.py URL_A SERVER_NAME_A URL_B SERVER_NAME_B CA.pem \
        [--only a,b,c] [--timeout 120]

A is the server under test (Estuary), B is Synapse; federation_env.py sets
them up. Users alice (on A) and bob and carol (on B) talk through both
servers, so every check below crosses federation in one direction or both:

  a. alice registers on A, bob on B
  b. alice creates a public room on A, bob joins it by room ID via A
  c. alice sees bob's join; a message each way
  d. alice sets the topic and gives bob power level 50; bob sees both
  e. bob's typing reaches alice; alice's read receipt reaches bob
  f. bob creates a room on B and invites alice; she joins; a message each way
  g. alice fills a new room on A; carol, on B, which was never in it, joins
     and pages back to alice's first message (B backfills it from A)
  h. bob leaves the first room; alice sees his leave
  i. alice creates a room on A and invites bob; he joins; a message each way
  j. bob publishes a room on B under an alias; alice resolves the alias,
     joins by it, and reads bob's display name from B
  k. A is killed (kill -9) and restarted mid-conversation (by the caller,
     through files in --restart-dir); nothing sent to A or by A is lost
  l. media: bob's upload on B is downloaded through A (fetched over
     federation), and alice's upload on A through B
  m. bob invites alice to a room on B; she declines; bob sees her leave, and
     her own sync shows the room as left
  n. bob lists A's public room directory through B and finds alice's room
  o. alice joins a room of bob's on B after messages she never saw, leaves,
     and rejoins after more
  p. presence and status messages cross both ways
  q. bob fills a new room on B; alice, on A, which was never in it, joins
     and pages back to bob's first message (A backfills it from B)
  r. alice lists B's public room directory through A and finds bob's room
  s. knocks both ways: bob knocks on alice's knock-only room on A, alice on
     bob's on B; each owner sees the knock, invites, and the knocker joins

--only runs some of the steps (the Rust test grows the list as Estuary's
federation grows); whatever a selected step needs (users, the first room) is
set up on the way, by the same code as steps a and b. One line is printed per
step, and "interop ok" at the end; the exit code is 1 at the first failure.

Only the standard library is used (urllib with an ssl context that trusts the
test CA), so any Python 3 runs it. Registration follows the user-interactive
auth flows the server offers: m.login.dummy, and m.login.registration_token
with the token in $REGISTRATION_TOKEN.
"""

import argparse
import json
import os
import ssl
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

STEPS = "abcdefghijklmnopqrstuvw"
# One wait for something to arrive over federation; the whole run has its own
# deadline (--timeout).
WAIT_SECONDS = 30
# Long-poll timeout of each /sync.
SYNC_TIMEOUT_MS = 2000
# Messages alice sends into the room carol pages back through in step g.
HISTORY_MESSAGES = 5
MAX_PAGES = 20


class Failure(Exception):
    """A check that did not hold, or a request that was refused."""


class Deadline:
    """The run's overall time budget: every wait is cut to what is left."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def cap(self, seconds):
        left = self.left()
        if left <= 0:
            raise Failure("the run's overall deadline has passed")
        return min(seconds, left)


def quote(s):
    """Room, user and event IDs contain '!', '@', ':' and '$': all escaped."""
    return urllib.parse.quote(s, safe="")


class Server:
    """One homeserver's client API."""

    def __init__(self, label, url, server_name, ssl_context):
        self.label = label
        self.url = url.rstrip("/")
        self.server_name = server_name
        self.ssl_context = ssl_context

    def media(self, method, path, token, data=None, content_type=None):
        """A raw media request under /_matrix/client/v1/media (bytes in and
        out); returns (status, bytes)."""
        request = urllib.request.Request(self.url + "/_matrix/client/v1/media" + path, data=data, method=method)
        if path.startswith("/upload"):
            request = urllib.request.Request(self.url + "/_matrix/media/v3" + path, data=data, method=method)
        request.add_header("Authorization", "Bearer " + token)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self.ssl_context, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError as e:
            raise Failure(f"{method} {path}: {e}") from e

    def request(self, method, path, body=None, query=None, token=None, timeout=30):
        """Returns (status, JSON body); 4xx and 5xx are answers, not exceptions,
        so that callers can handle UIA's 401."""
        # Paths that name their version (`/v1/...`) keep it; the rest are v3.
        url = self.url + "/_matrix/client" + (path if path.startswith("/v1/") else "/v3" + path)
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(request, context=self.ssl_context, timeout=timeout) as r:
                return r.status, _json(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _json(e.read())
        except OSError as e:
            raise Failure(f"{method} {url}: {e}") from e


def _json(raw):
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        return {"unparsed": raw[:500].decode(errors="replace")}


def register(server, localpart, deadline):
    """Registers localpart on server through whatever UIA flow it offers.

    The first request carries no auth, as the spec has clients start; a 401
    names the flows, and each stage we can do is answered in turn.
    """
    body = {"username": localpart, "password": uuid.uuid4().hex,
            "initial_device_display_name": "federation interop"}
    for _ in range(5):
        status, answer = server.request("POST", "/register", body, timeout=deadline.cap(30))
        if status == 200:
            return User(server, answer["user_id"], answer["access_token"], deadline)
        if status != 401 or "flows" not in answer:
            raise Failure(f"register {localpart} on {server.label}: {status} {answer}")
        body["auth"] = _next_auth_stage(answer)
    raise Failure(f"register {localpart} on {server.label}: UIA did not finish")


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


class User:
    """A logged-in user, with a sync stream that remembers what it has seen.

    Every event /sync has returned is kept, so that a wait finds an event that
    arrived in a batch an earlier wait consumed.
    """

    def __init__(self, server, user_id, token, deadline):
        self.server = server
        self.user_id = user_id
        self.token = token
        self.deadline = deadline
        self.since = None
        self.seen = []  # (section, room_id, event)

    def call(self, method, path, body=None, query=None):
        """A client API request that must succeed; returns the JSON answer."""
        if method in ("POST", "PUT") and body is None:
            body = {}
        status, answer = self.server.request(
            method, path, body, query, self.token, timeout=self.deadline.cap(30))
        if status != 200:
            raise Failure(f"{self.user_id}: {method} {path}: {status} {answer}")
        return answer

    def send_text(self, room_id, text):
        """Sends an m.text message; returns its event ID."""
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}"
        return self.call("PUT", path, {"msgtype": "m.text", "body": text})["event_id"]

    def join(self, room_id, via):
        """Joins by room ID through the server `via`: `via` is the current
        parameter, `server_name` the one servers older than Matrix 1.12 read."""
        query = {"via": via, "server_name": via}
        return self.call("POST", f"/join/{quote(room_id)}", {}, query)["room_id"]

    def sync_once(self, timeout_ms):
        query = {"timeout": timeout_ms}
        if self.since:
            query["since"] = self.since
        answer = self.call_sync(query, timeout_ms)
        self.since = answer["next_batch"]
        self.seen.extend(_sync_items(answer))

    def call_sync(self, query, timeout_ms):
        status, answer = self.server.request(
            "GET", "/sync", None, query, self.token,
            timeout=self.deadline.cap(timeout_ms / 1000 + 15))
        if status != 200:
            raise Failure(f"{self.user_id}: sync: {status} {answer}")
        return answer

    def wait_for(self, what, predicate, seconds=WAIT_SECONDS):
        """Syncs until predicate(section, room_id, event) holds for an event
        seen so far; returns that event."""
        end = time.monotonic() + self.deadline.cap(seconds)
        checked = 0
        while True:
            for section, room_id, event in self.seen[checked:]:
                if predicate(section, room_id, event):
                    return event
            checked = len(self.seen)
            left = end - time.monotonic()
            if left <= 0:
                raise Failure(f"{self.user_id} did not see {what} within {seconds} s")
            self.sync_once(int(min(SYNC_TIMEOUT_MS, left * 1000)))


def _sync_items(answer):
    """Flattens a /sync answer into (section, room_id, event) triples."""
    rooms = answer.get("rooms", {})
    for room_id, room in rooms.get("join", {}).items():
        for section in ("state", "timeline", "ephemeral"):
            for event in room.get(section, {}).get("events", []):
                yield section, room_id, event
    for room_id, room in rooms.get("invite", {}).items():
        for event in room.get("invite_state", {}).get("events", []):
            yield "invite", room_id, event
    for room_id, room in rooms.get("leave", {}).items():
        for section in ("state", "timeline"):
            for event in room.get(section, {}).get("events", []):
                yield "leave", room_id, event
    for event in answer.get("presence", {}).get("events", []):
        yield "presence", None, event


# Predicates for User.wait_for, on one (section, room_id, event) of a sync.

def membership(room_id, user_id, value, sections=("state", "timeline")):
    def check(section, rid, event):
        return (section in sections and rid == room_id
                and event.get("type") == "m.room.member"
                and event.get("state_key") == user_id
                and event.get("content", {}).get("membership") == value)
    return check


def message(room_id, sender, body):
    def check(section, rid, event):
        return (section == "timeline" and rid == room_id
                and event.get("type") == "m.room.message" and event.get("sender") == sender
                and event.get("content", {}).get("body") == body)
    return check


def state_event(room_id, event_type, content_check):
    def check(section, rid, event):
        return (section in ("state", "timeline") and rid == room_id
                and event.get("type") == event_type and event.get("state_key") == ""
                and content_check(event.get("content", {})))
    return check


def ephemeral(room_id, event_type, content_check):
    def check(section, rid, event):
        return (section == "ephemeral" and rid == room_id
                and event.get("type") == event_type
                and content_check(event.get("content", {})))
    return check


class Scenario:
    """The steps, and the state they share (users, rooms), made on demand so
    that any subset of steps can run."""

    def __init__(self, a, b, deadline, restart_dir=None):
        self.a = a
        self.b = b
        self.deadline = deadline
        self.restart_dir = restart_dir
        self.tag = uuid.uuid4().hex[:6]  # unique names: reruns against the same servers work
        self._users = {}
        self._room = None

    def user(self, name, server):
        if name not in self._users:
            user = register(server, f"{name}-{self.tag}", self.deadline)
            user.sync_once(0)  # start the stream now: later waits see only new events
            self._users[name] = user
            print(f"  {name} is {user.user_id}", flush=True)
        return self._users[name]

    @property
    def alice(self):
        return self.user("alice", self.a)

    @property
    def bob(self):
        return self.user("bob", self.b)

    @property
    def carol(self):
        return self.user("carol", self.b)

    def first_room(self):
        """alice's public room on A, which bob has joined over federation."""
        if self._room is None:
            alice, bob = self.alice, self.bob
            room_id = alice.call("POST", "/createRoom",
                                 {"preset": "public_chat", "name": "interop " + self.tag})["room_id"]
            print(f"  alice created {room_id}", flush=True)
            bob.join(room_id, self.a.server_name)
            print(f"  bob joined {room_id} via {self.a.server_name}", flush=True)
            self._room = room_id
        return self._room

    def step_a(self):
        """alice registers on A, bob on B.

        Nothing is federated yet, but every later step needs the users, and a
        failure here is not a federation failure.
        """
        self.user("alice", self.a)
        self.user("bob", self.b)

    def step_b(self):
        """alice creates a public room on A; bob joins it by room ID via A.

        A remote join: B asks A for make_join and send_join, and fetches A's
        signing key; A fetches B's to check the requests' signatures.
        """
        self.first_room()

    def step_c(self):
        """alice sees bob's join; a message each way.

        PDUs both ways (/send transactions) in a room that lives on A.
        """
        room, alice, bob = self.first_room(), self.alice, self.bob
        alice.wait_for("bob's join", membership(room, bob.user_id, "join"))
        text = f"hello from alice {self.tag}"
        alice.send_text(room, text)
        bob.wait_for("alice's message", message(room, alice.user_id, text))
        text = f"hello from bob {self.tag}"
        bob.send_text(room, text)
        alice.wait_for("bob's message", message(room, bob.user_id, text))

    def step_d(self):
        """alice sets the topic and gives bob power level 50; bob sees both.

        Power levels are an auth event: B must accept it for bob's later events
        to pass auth there.
        """
        room, alice, bob = self.first_room(), self.alice, self.bob
        topic = f"topic {self.tag}"
        alice.call("PUT", f"/rooms/{quote(room)}/state/m.room.topic", {"topic": topic})
        levels = alice.call("GET", f"/rooms/{quote(room)}/state/m.room.power_levels")
        levels.setdefault("users", {})[bob.user_id] = 50
        alice.call("PUT", f"/rooms/{quote(room)}/state/m.room.power_levels", levels)
        bob.wait_for("the topic", state_event(room, "m.room.topic",
                                              lambda c: c.get("topic") == topic))
        bob.wait_for("power level 50", state_event(
            room, "m.room.power_levels",
            lambda c: c.get("users", {}).get(bob.user_id) == 50))

    def step_e(self):
        """bob's typing reaches alice; alice's read receipt reaches bob.

        EDUs both ways: m.typing from B to A, m.receipt from A to B.
        """
        room, alice, bob = self.first_room(), self.alice, self.bob
        bob.call("PUT", f"/rooms/{quote(room)}/typing/{quote(bob.user_id)}",
                 {"typing": True, "timeout": 30000})
        alice.wait_for("bob typing", ephemeral(
            room, "m.typing", lambda c: bob.user_id in c.get("user_ids", [])))
        text = f"read me {self.tag}"
        event_id = bob.send_text(room, text)
        alice.wait_for("bob's message", message(room, bob.user_id, text))
        alice.call("POST", f"/rooms/{quote(room)}/receipt/m.read/{quote(event_id)}", {})
        bob.wait_for("alice's read receipt", ephemeral(
            room, "m.receipt",
            lambda c: alice.user_id in c.get(event_id, {}).get("m.read", {})))

    def step_f(self):
        """bob creates a room on B and invites alice; she joins; a message each way.

        The other direction: an invite from B to A (/v2/invite), and A joining
        a room it does not host.
        """
        alice, bob = self.alice, self.bob
        room = bob.call("POST", "/createRoom",
                        {"preset": "private_chat", "name": "bob's " + self.tag})["room_id"]
        bob.call("POST", f"/rooms/{quote(room)}/invite", {"user_id": alice.user_id})
        alice.wait_for("bob's invite", membership(room, alice.user_id, "invite",
                                                  sections=("invite",)))
        alice.join(room, self.b.server_name)
        bob.wait_for("alice's join", membership(room, alice.user_id, "join"))
        text = f"hi bob {self.tag}"
        alice.send_text(room, text)
        bob.wait_for("alice's message", message(room, alice.user_id, text))
        text = f"hi alice {self.tag}"
        bob.send_text(room, text)
        alice.wait_for("bob's message", message(room, bob.user_id, text))

    def step_g(self):
        """carol, on B, joins a room of A's and pages back to its first message.

        Backfill: the room is new and B never took part in it, so B holds none
        of its history and must fetch it from A (/backfill) when carol pages
        back. (In the first room B has everything already, through bob.)
        """
        self._late_joiner_pages_back(self.alice, self.a, self.carol, "history")

    def _late_joiner_pages_back(self, owner, owner_server, joiner, label):
        """owner fills a new room; joiner, on the other server, joins it and
        pages back to its first message."""
        room = owner.call("POST", "/createRoom",
                          {"preset": "public_chat", "name": f"{label} {self.tag}"})["room_id"]
        first = f"{label} 0 {self.tag}"
        for i in range(HISTORY_MESSAGES):
            owner.send_text(room, first if i == 0 else f"{label} {i} {self.tag}")
        joiner.join(room, owner_server.server_name)
        bodies = self._page_back(joiner, room, first)
        print(f"  {joiner.user_id} paged back through {len(bodies)} messages", flush=True)

    def _page_back(self, user, room, wanted):
        """Pages /messages backwards (from the room's end: `from` is optional
        since Matrix 1.3) until the message `wanted` shows up."""
        bodies, token = [], None
        for _ in range(MAX_PAGES):
            query = {"dir": "b", "limit": 50}
            if token:
                query["from"] = token
            page = user.call("GET", f"/rooms/{quote(room)}/messages", query=query)
            for event in page.get("chunk", []):
                if event.get("type") == "m.room.message":
                    bodies.append(event.get("content", {}).get("body"))
            if wanted in bodies:
                return bodies
            token = page.get("end")
            if not token or not page.get("chunk"):
                break
        raise Failure(f"{user.user_id} paged back to the start without {wanted!r}: {bodies}")

    def step_q(self):
        """alice, on A, joins a room of B's and pages back to its first message.

        The mirror of step g: A holds none of the room's history before
        alice's join and fetches it from B (/backfill, and /state for the
        oldest event it gets) when she pages back.
        """
        self._late_joiner_pages_back(self.bob, self.b, self.alice, "b history")

    def step_h(self):
        """bob leaves the first room; alice sees his leave."""
        room, alice, bob = self.first_room(), self.alice, self.bob
        bob.call("POST", f"/rooms/{quote(room)}/leave", {})
        alice.wait_for("bob's leave", membership(room, bob.user_id, "leave"))

    def step_i(self):
        """alice creates a room on A and invites bob; he joins; a message each way.

        An invite from A to B: A asks B to countersign it (/v2/invite) before
        the invite enters the room.
        """
        alice, bob = self.alice, self.bob
        room = alice.call("POST", "/createRoom",
                          {"preset": "private_chat", "name": "alice's " + self.tag})["room_id"]
        alice.call("POST", f"/rooms/{quote(room)}/invite", {"user_id": bob.user_id})
        bob.wait_for("alice's invite", membership(room, bob.user_id, "invite",
                                                  sections=("invite",)))
        bob.join(room, self.a.server_name)
        alice.wait_for("bob's join", membership(room, bob.user_id, "join"))
        text = f"thanks for the invite {self.tag}"
        bob.send_text(room, text)
        alice.wait_for("bob's message", message(room, bob.user_id, text))

    def step_j(self):
        """bob publishes a room under an alias on B; alice joins by the alias and reads bob's profile.

        /query/directory resolves the alias and names servers to join
        through; /query/profile answers for bob's display name.
        """
        alice, bob = self.alice, self.bob
        localpart = "lobby-" + self.tag
        bob.call("PUT", f"/profile/{quote(bob.user_id)}/displayname", {"displayname": "Bob " + self.tag})
        room = bob.call("POST", "/createRoom", {"preset": "public_chat",
                                                 "room_alias_name": localpart})["room_id"]
        alias = f"#{localpart}:{self.b.server_name}"
        found = alice.call("GET", f"/directory/room/{quote(alias)}")
        if found.get("room_id") != room or not found.get("servers"):
            raise Failure(f"alias {alias} resolved to {found}, not {room} with servers")
        joined = alice.call("POST", f"/join/{quote(alias)}", {})["room_id"]
        if joined != room:
            raise Failure(f"joining {alias} joined {joined}, not {room}")
        bob.wait_for("alice's join by alias", membership(room, alice.user_id, "join"))
        name = alice.call("GET", f"/profile/{quote(bob.user_id)}/displayname").get("displayname")
        if name != "Bob " + self.tag:
            raise Failure(f"bob's display name read from A is {name!r}")

    def step_k(self):
        """A is killed and restarted mid-conversation; nothing sent to it or by it is lost.

        alice's message just before the crash may still be in A's outgoing
        queue when A dies: it must reach bob after the restart. bob's message
        while A is down must reach alice once B gets through again (B retries
        when it next has something for A; A fills any gap it sees with
        get_missing_events).
        """
        if not self.restart_dir:
            raise Failure("step k needs --restart-dir (the caller restarts A)")
        alice, bob = self.alice, self.bob
        room = alice.call("POST", "/createRoom",
                          {"preset": "public_chat", "name": "restart " + self.tag})["room_id"]
        bob.join(room, self.a.server_name)
        alice.wait_for("bob's join", membership(room, bob.user_id, "join"))
        before = f"just before the crash {self.tag}"
        alice.send_text(room, before)
        restarted = os.path.join(self.restart_dir, "restarted")
        with open(os.path.join(self.restart_dir, "restart-now"), "w") as f:
            f.write("now")
        during = f"while A is down {self.tag}"
        bob.send_text(room, during)
        while not os.path.exists(restarted):
            if self.deadline.left() <= 0:
                raise Failure("A was not restarted in time")
            time.sleep(0.1)
        print("  A restarted", flush=True)
        after = f"after the restart {self.tag}"
        bob.send_text(room, after)
        alice.wait_for("bob's message sent while A was down", message(room, bob.user_id, during))
        alice.wait_for("bob's message after the restart", message(room, bob.user_id, after))
        bob.wait_for("alice's message from just before the crash", message(room, alice.user_id, before))
        reply = f"back again {self.tag}"
        alice.send_text(room, reply)
        bob.wait_for("alice's message after the restart", message(room, alice.user_id, reply))

    def step_l(self):
        """media: bob's upload on B downloads through A, alice's on A through B.

        A fetches the file from B over /_matrix/federation/v1/media/download
        and caches it; B does the same from A.
        """
        alice, bob = self.alice, self.bob
        for uploader, viewer, label in ((bob, alice, "bob's"), (alice, bob, "alice's")):
            payload = f"{label} file {self.tag}".encode()
            status, answer = uploader.server.media("POST", "/upload?filename=note.txt", uploader.token,
                                                   payload, "text/plain")
            if status != 200:
                raise Failure(f"{label} upload answered {status}: {answer[:200]!r}")
            mxc = json.loads(answer)["content_uri"]
            server_and_id = mxc[len("mxc://"):]
            status, body = viewer.server.media("GET", "/download/" + server_and_id, viewer.token)
            if status != 200 or body != payload:
                raise Failure(f"{label} upload downloaded from the other server: {status} {body[:200]!r}")

    def step_m(self):
        """bob invites alice to a room on B; she declines; bob sees her leave.

        Declining goes to B as a leave (make_leave, send_leave); A keeps
        that leave in the invite's place, so alice's sync lists the room
        under "leave".
        """
        alice, bob = self.alice, self.bob
        room = bob.call("POST", "/createRoom", {"preset": "private_chat", "name": "declined " + self.tag})["room_id"]
        bob.call("POST", f"/rooms/{quote(room)}/invite", {"user_id": alice.user_id})
        alice.wait_for("bob's invite", membership(room, alice.user_id, "invite", sections=("invite",)))
        alice.call("POST", f"/rooms/{quote(room)}/leave", {})
        bob.wait_for("alice's decline", membership(room, alice.user_id, "leave"))
        alice.wait_for("her own decline", membership(room, alice.user_id, "leave", sections=("leave",)))

    def step_n(self):
        """bob lists A's room directory through B and finds alice's published room.

        B asks A's /_matrix/federation/v1/publicRooms for its client.
        """
        self._directory_through_other_server(self.alice, self.a, self.bob, "directory")

    def step_r(self):
        """alice lists B's room directory through A and finds bob's published room.

        The mirror of step n: A asks B's /_matrix/federation/v1/publicRooms.
        """
        self._directory_through_other_server(self.bob, self.b, self.alice, "b directory")

    def step_s(self):
        """Knocks across servers, both ways.

        The knocker's server asks the room's for a template (make_knock)
        and sends the signed knock (send_knock); the owner lets them in with
        an invite, which the knocker accepts by joining.
        """
        self._knock_and_admit(self.alice, self.a, self.bob)
        self._knock_and_admit(self.bob, self.b, self.alice)

    def step_t(self):
        """Restricted rooms, both ways: a user in an allowed room joins
        without an invite.

        The room's server vouches for the join (make_join names one of its
        members in join_authorised_via_users_server) and signs it in
        send_join; the joining server accepts the countersigned event.
        """
        self._restricted_join(self.alice, self.a, self.bob)
        self._restricted_join(self.bob, self.b, self.alice)

    def step_u(self):
        """Spaces across servers, both ways: a user in a space of the other
        server lists it with a child room their own server has never seen.

        Their server asks the space's (/_matrix/federation/v1/hierarchy)
        for the child.
        """
        self._space_from_other_server(self.alice, self.a, self.bob)
        self._space_from_other_server(self.bob, self.b, self.alice)

    def step_v(self):
        """A guest on A leaves a room when bob, on B, revokes guest access.

        A sees the m.room.guest_access change arrive over federation and has
        its guests leave, as for a change made on A.
        """
        alice, bob = self.alice, self.bob
        room = alice.call("POST", "/createRoom", {
            "preset": "public_chat", "name": f"guests {self.tag}",
            "initial_state": [{"type": "m.room.guest_access", "state_key": "",
                               "content": {"guest_access": "can_join"}}],
            "power_level_content_override": {"users": {alice.user_id: 100, bob.user_id: 100}},
        })["room_id"]
        bob.join(room, self.a.server_name)
        status, answer = self.a.request("POST", "/register", {}, {"kind": "guest"})
        if status != 200:
            raise Failure(f"guest registration on A: {status} {answer}")
        guest = User(self.a, answer["user_id"], answer["access_token"], self.deadline)
        guest.call("POST", f"/rooms/{quote(room)}/join", {})
        bob.wait_for("the guest's join", membership(room, guest.user_id, "join"))
        bob.call("PUT", f"/rooms/{quote(room)}/state/m.room.guest_access", {"guest_access": "forbidden"})
        alice.wait_for("the guest's leave after bob revoked guest access", membership(room, guest.user_id, "leave"))

    def step_w(self):
        """bob, on B, upgrades a room alice, on A, named and published: her join of the new room moves A's alias and directory entry, and her tag follows.

        The upgrading server moves only its own aliases; A does the same for
        its own when its first user joins the new room.
        """
        alice, bob = self.alice, self.bob
        room = bob.call("POST", "/createRoom", {
            "preset": "public_chat", "name": f"old {self.tag}", "room_version": "10",
            "power_level_content_override": {"users": {alice.user_id: 100, bob.user_id: 100}},
        })["room_id"]
        alice.join(room, self.b.server_name)
        alias = f"#old-{self.tag}:{self.a.server_name}"
        alice.call("PUT", f"/directory/room/{quote(alias)}", {"room_id": room})
        alice.call("PUT", f"/directory/list/room/{quote(room)}", {"visibility": "public"})
        alice.call("PUT", f"/user/{quote(alice.user_id)}/rooms/{quote(room)}/tags/u.work", {"order": 0.5})
        new = bob.call("POST", f"/rooms/{quote(room)}/upgrade", {"new_version": "11"})["replacement_room"]
        alice.wait_for("the tombstone", state_event(room, "m.room.tombstone",
                                                    lambda c: c.get("replacement_room") == new))
        alice.join(new, self.b.server_name)
        if alice.call("GET", f"/directory/room/{quote(alias)}").get("room_id") != new:
            raise Failure(f"A's alias {alias} does not name the new room {new}")
        for room_id, visibility in ((new, "public"), (room, "private")):
            listed = alice.call("GET", f"/directory/list/room/{quote(room_id)}")
            if listed.get("visibility") != visibility:
                raise Failure(f"A's directory shows {room_id} as {listed}, not {visibility}")
        tags = alice.call("GET", f"/user/{quote(alice.user_id)}/rooms/{quote(new)}/tags")
        if "u.work" not in tags.get("tags", {}):
            raise Failure(f"alice's tag did not follow her to the new room: {tags}")

    def _space_from_other_server(self, owner, owner_server, viewer):
        via = owner_server.server_name
        child = owner.call("POST", "/createRoom", {"preset": "public_chat", "name": f"child {self.tag}"})["room_id"]
        space = owner.call("POST", "/createRoom", {
            "preset": "public_chat", "name": f"space {self.tag}", "creation_content": {"type": "m.space"},
            "initial_state": [{"type": "m.space.child", "state_key": child, "content": {"via": [via]}}],
        })["room_id"]
        # In the space, but never in the child: the viewer's server asks the
        # owner's for the child (Synapse walks no space its user is not in).
        viewer.join(space, via)
        listed = viewer.call("GET", f"/v1/rooms/{quote(space)}/hierarchy", query={"limit": 10})
        found = {room.get("room_id"): room for room in listed.get("rooms", [])}
        if space not in found or child not in found:
            raise Failure(f"{owner_server.label}'s space {space} with {child} not listed: {listed}")
        if found[space].get("room_type") != "m.space" or not found[space].get("children_state"):
            raise Failure(f"the space is listed without its type or children: {found[space]}")

    def _restricted_join(self, owner, owner_server, joiner):
        via = owner_server.server_name
        allowed = owner.call("POST", "/createRoom", {"preset": "public_chat", "name": f"allowed {self.tag}"})["room_id"]
        joiner.join(allowed, via)
        owner.wait_for(f"{joiner.user_id}'s join of the allowed room", membership(allowed, joiner.user_id, "join"))
        rule = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": allowed}]}
        room = owner.call("POST", "/createRoom", {
            "preset": "private_chat", "name": f"restricted {self.tag}", "room_version": "10",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": rule}],
        })["room_id"]
        joiner.join(room, via)
        owner.wait_for(f"{joiner.user_id}'s join of the restricted room", membership(room, joiner.user_id, "join"))

    def _knock_and_admit(self, owner, owner_server, knocker):
        room = owner.call("POST", "/createRoom", {
            "preset": "private_chat", "name": f"knock {self.tag}", "room_version": "10",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        })["room_id"]
        via = owner_server.server_name
        knocker.call("POST", f"/knock/{quote(room)}", {"reason": "let me in"}, {"via": via, "server_name": via})
        owner.wait_for(f"{knocker.user_id}'s knock", membership(room, knocker.user_id, "knock"))
        owner.call("POST", f"/rooms/{quote(room)}/invite", {"user_id": knocker.user_id})
        knocker.wait_for("the invite after the knock", membership(room, knocker.user_id, "invite", sections=("invite",)))
        knocker.join(room, via)
        owner.wait_for(f"{knocker.user_id}'s join after the knock", membership(room, knocker.user_id, "join"))

    def _directory_through_other_server(self, owner, owner_server, viewer, label):
        """owner publishes a room; viewer finds it in owner_server's directory
        (searched by name) through their own server."""
        name = f"{label} {self.tag}"
        room = owner.call("POST", "/createRoom", {"preset": "public_chat", "visibility": "public",
                                                  "name": name})["room_id"]
        listed = viewer.call("POST", "/publicRooms", {"limit": 100, "filter": {"generic_search_term": name}},
                             query={"server": owner_server.server_name})
        found = [r for r in listed.get("chunk", []) if r.get("room_id") == room]
        if not found or found[0].get("name") != name:
            raise Failure(f"{owner_server.label}'s directory lacks {room} named {name!r}: {listed}")
        listed = viewer.call("GET", "/publicRooms", query={"server": owner_server.server_name, "limit": 100})
        if not any(r.get("room_id") == room for r in listed.get("chunk", [])):
            raise Failure(f"{owner_server.label}'s directory (GET) lacks {room}: {listed}")

    def step_o(self):
        """alice, on A, joins a room of bob's on B after messages, leaves, and rejoins after more.

        The join's prev_events are B's latest messages, which A has never
        seen: the state send_join returns stands for them. The rejoin does
        the same on a room A already knows.
        """
        alice, bob = self.alice, self.bob
        room = bob.call("POST", "/createRoom", {"preset": "public_chat", "name": "chatty " + self.tag})["room_id"]
        bob.send_text(room, f"before alice {self.tag}")
        alice.join(room, self.b.server_name)
        bob.wait_for("alice's join after messages", membership(room, alice.user_id, "join"))
        alice.call("POST", f"/rooms/{quote(room)}/leave", {})
        bob.wait_for("alice's leave", membership(room, alice.user_id, "leave"))
        bob.send_text(room, f"while alice was away {self.tag}")
        alice.join(room, self.b.server_name)
        text = f"back again {self.tag}"
        alice.send_text(room, text)
        bob.wait_for("alice's message after her rejoin", message(room, alice.user_id, text))

    def step_p(self):
        """alice, on A, and bob, on B, share a room and see each other's presence and status.

        Presence crosses servers as m.presence EDUs, to the servers that
        share a room with the user.
        """
        alice, bob = self.alice, self.bob
        room = alice.call("POST", "/createRoom", {"preset": "public_chat", "name": "presence " + self.tag})["room_id"]
        bob.join(room, self.a.server_name)
        alice.wait_for("bob's join for presence", membership(room, bob.user_id, "join"))
        for user, other in ((alice, bob), (bob, alice)):
            status = f"status of {user.user_id} {self.tag}"
            user.call("PUT", f"/presence/{quote(user.user_id)}/status",
                      {"presence": "online", "status_msg": status})
            other.wait_for(f"{user.user_id}'s presence",
                           lambda section, _, event, user=user, status=status: section == "presence"
                           and event.get("sender") == user.user_id
                           and event.get("content", {}).get("status_msg") == status)


def run(scenario, steps):
    """Runs the selected steps in order; returns the exit code."""
    run_started = time.monotonic()
    for step in steps:
        method = getattr(scenario, "step_" + step)
        summary = method.__doc__.split("\n")[0].rstrip(".")
        print(f"step {step}: {summary}", flush=True)
        started = time.monotonic()
        try:
            method()
        except Failure as e:
            print(f"step {step} FAILED: {e}", flush=True)
            return 1
        except Exception as e:  # e.g. an answer without a field the spec requires
            traceback.print_exc()
            print(f"step {step} FAILED: {type(e).__name__}: {e}", flush=True)
            return 1
        print(f"step {step} ok ({time.monotonic() - started:.1f} s)", flush=True)
    print(f"{len(steps)} steps in {time.monotonic() - run_started:.1f} s", flush=True)
    print("interop ok", flush=True)
    return 0


def parse_steps(only):
    steps = [s.strip() for s in only.split(",") if s.strip()] if only else list(STEPS)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"unknown steps {unknown}; the steps are {','.join(STEPS)}")
    return sorted(set(steps), key=STEPS.index)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url_a")
    parser.add_argument("server_name_a")
    parser.add_argument("url_b")
    parser.add_argument("server_name_b")
    parser.add_argument("ca", help="PEM file of the CA both servers' certificates chain to")
    parser.add_argument("--only", help="comma-separated steps to run, e.g. a,b,c")
    parser.add_argument("--timeout", type=float, default=120, help="seconds for the whole run")
    parser.add_argument("--restart-dir", help="where step k asks the caller to restart A")
    args = parser.parse_args(argv)
    steps = parse_steps(args.only)
    context = ssl.create_default_context(cafile=args.ca)
    deadline = Deadline(args.timeout)
    a = Server("A", args.url_a, args.server_name_a, context)
    b = Server("B", args.url_b, args.server_name_b, context)
    return run(Scenario(a, b, deadline, args.restart_dir), steps)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
