"""Interop: the IRC bridge heisenbridge (an application service) against the
homeserver, with a local ngircd as the IRC network. A Matrix user sets the
bridge up through its control room, joins an IRC channel through it, and a
plain IRC client and the Matrix user exchange a message each way.

Usage: heisenbridge_irc.py <homeserver base URL> <scratch dir>
Run it with the heisenbridge venv's Python (INTEROP_BRIDGE_PYTHON from
scripts/setup-interop): it starts `python -m heisenbridge` with the same
interpreter. Prints "interop ok" and exits 0 on success.

Environment:
  BRIDGE_REGISTRATION_MODE  "admin-api" (default): generate a registration and
      add it at runtime with POST /_estuary/admin/v1/appservices, as the first
      registered account (Estuary makes that one a server admin).
      "preloaded": the homeserver was started with the registration in
      BRIDGE_REGISTRATION_FILE (Synapse's app_service_config_files); the bridge
      uses that file's tokens and listens on its url's port.
  BRIDGE_REGISTRATION_FILE  the registration for "preloaded".
  NGIRCD                    the ngircd binary (default: PATH, then /usr/sbin).

Everything listens on 127.0.0.1 only, every wait is bounded, the whole run is
under TOTAL_SECONDS, and the processes it starts are stopped on every exit.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from ruamel.yaml import YAML  # heisenbridge's own YAML library, in its venv

TOTAL_SECONDS = 140  # the Rust harness gives the script 180 s
ADMIN = "bridgeadmin"
OWNER = "ircfan"  # also the bridge's IRC nick (heisenbridge uses the localpart)
PASSWORD = "interop password heisenbridge"
NETWORK = "estuary"
CHANNEL = "#estuary"
IRC_NICK = "irctester"
MOTD = "estuary-interop-motd"  # a welcome line we can recognise in the bridge's notices
FROM_IRC = "hello from irc"
FROM_MATRIX = "hello from matrix"

START = time.monotonic()
DEADLINE = START + TOTAL_SECONDS
SEEN = {}  # the Matrix user and bot once known, to show the bot's notices on failure


class Failure(Exception):
    """A step that did not happen: the message says which."""


def log(message):
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


def remaining(limit):
    """Seconds a step may wait: its own limit, cut by the overall deadline."""
    return max(0.0, min(limit, DEADLINE - time.monotonic()))


def free_port():
    """A loopback TCP port nobody listens on (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, process, what, limit):
    end = time.monotonic() + remaining(limit)
    while time.monotonic() < end:
        if process.poll() is not None:
            raise Failure(f"{what} exited with status {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise Failure(f"{what} is not listening on 127.0.0.1:{port} after {limit} s")


# --- processes ---------------------------------------------------------------

PROCESSES = []  # (name, Popen, log path), stopped in reverse order on exit


def _die_with_parent():
    # Runs in the child before exec: if this script is SIGKILLed (the harness's
    # timeout), the kernel sends the child SIGTERM; the finally in main()
    # covers every other exit.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# Started as root, ngircd switches to "nobody", and a change of user clears the
# parent-death signal: this keeper (which keeps it) passes its SIGTERM on.
KEEPER = """
import signal, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: child.terminate())
sys.exit(child.wait())
"""


def start(name, argv, log_path, env=None):
    out = open(log_path, "wb")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                               env=env, preexec_fn=_die_with_parent)
    out.close()
    PROCESSES.append((name, process, log_path))
    return process


def stop_all():
    for name, process, _ in reversed(PROCESSES):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def dump_logs(lines=60):
    for name, _, path in PROCESSES:
        try:
            with open(path, errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError as e:
            tail = [f"(cannot read {path}: {e})\n"]
        print(f"----- last {len(tail)} lines of {name} log ({path}) -----", file=sys.stderr)
        sys.stderr.write("".join(tail))


def ngircd_binary():
    found = os.environ.get("NGIRCD") or shutil.which("ngircd")
    if not found and os.access("/usr/sbin/ngircd", os.X_OK):
        found = "/usr/sbin/ngircd"  # /usr/sbin is not on every user's PATH
    if not found:
        raise Failure("ngircd not found (scripts/setup-interop installs it)")
    return found


def start_ngircd(scratch, port):
    conf = os.path.join(scratch, "ngircd.conf")
    # Minimal: loopback only, no PAM/ident/DNS lookups (each would stall or
    # fail in a sandbox), nicks long enough for Matrix localparts, no per-IP
    # connection cap. As root ngircd drops to "nobody" by itself.
    with open(conf, "w") as f:
        f.write(f"""[Global]
\tName = irc.estuary.test
\tInfo = Estuary interop IRC server
\tAdminInfo1 = Estuary interop test
\tAdminInfo2 = loopback only
\tAdminEMail = nobody@localhost
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = "{MOTD}"
\tPidFile = {os.path.join(scratch, "ngircd.pid")}
[Limits]
\tMaxConnectionsIP = 0
\tMaxNickLength = 30
\tPingTimeout = 300
[Options]
\tPAM = no
\tIdent = no
\tDNS = no
""")
    # (As root, its log's "Error writing PID file" is expected: "nobody" cannot
    # write into the scratch dir.)
    process = start("ngircd", [sys.executable, "-c", KEEPER, ngircd_binary(), "-n", "-f", conf],
                    os.path.join(scratch, "ngircd.log"))
    wait_for_port(port, process, "ngircd", 15)


# --- Matrix over plain HTTP ----------------------------------------------------


def http(method, url, body=None, token=None, content_type="application/json", timeout=20):
    """(status, parsed JSON body); HTTP errors are returned, not raised."""
    data = None
    headers = {}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=max(1.0, remaining(timeout))) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except OSError as e:
        raise Failure(f"{method} {url}: {e}") from e
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"non_json_body": raw[:300].decode(errors="replace")}


def register(base, username):
    """Open registration with the dummy stage; returns (user_id, access token)."""
    status, body = http("POST", f"{base}/_matrix/client/v3/register", {
        "username": username,
        "password": PASSWORD,
        "auth": {"type": "m.login.dummy"},
        "initial_device_display_name": "heisenbridge interop",
    })
    if status != 200 or "access_token" not in body:
        raise Failure(f"registering {username}: {status} {body}")
    return body["user_id"], body["access_token"]


class MatrixUser:
    """Just enough of a client: requests, and a /sync loop that keeps every
    timeline event and invite it has seen, so waits can look back."""

    def __init__(self, base, user_id, token):
        self.base, self.user_id, self.token = base, user_id, token
        self.since = None
        self.events = []  # (room_id, event), in arrival order
        self.invites = {}  # room_id -> stripped state events
        self.handled_invites = set()

    def api(self, method, path, body=None, timeout=20):
        status, answer = http(method, self.base + path, body, self.token, timeout=timeout)
        if status != 200:
            raise Failure(f"{method} {path}: {status} {answer}")
        return answer

    def sync(self, wait_seconds):
        query = {"timeout": str(int(wait_seconds * 1000))}
        if self.since:
            query["since"] = self.since
        body = self.api("GET", "/_matrix/client/v3/sync?" + urllib.parse.urlencode(query),
                        timeout=wait_seconds + 15)
        self.since = body["next_batch"]
        rooms = body.get("rooms", {})
        for room_id, room in rooms.get("invite", {}).items():
            self.invites.setdefault(room_id, room.get("invite_state", {}).get("events", []))
        for room_id, room in rooms.get("join", {}).items():
            for event in room.get("timeline", {}).get("events", []):
                self.events.append((room_id, event))

    def wait(self, what, check, limit):
        """Syncs until check() returns something truthy, for at most limit s."""
        end = time.monotonic() + remaining(limit)
        while True:
            found = check()
            if found:
                return found
            left = end - time.monotonic()
            if left <= 0:
                raise Failure(f"timed out after {limit} s waiting for {what}")
            self.sync(min(left, 5))

    def new_invite(self, inviter):
        """The first invite not yet handled whose invite event (if the stripped
        state has it) was sent by inviter."""
        for room_id, state in self.invites.items():
            if room_id in self.handled_invites:
                continue
            mine = [e for e in state if e.get("type") == "m.room.member" and e.get("state_key") == self.user_id]
            if mine and mine[-1].get("sender") != inviter:
                continue
            self.handled_invites.add(room_id)
            name = next((e["content"].get("name") for e in state if e.get("type") == "m.room.name"), None)
            return room_id, name
        return None

    def accept_invite(self, what, inviter, limit):
        room_id, name = self.wait(f"an invite from {inviter} to the {what}", lambda: self.new_invite(inviter), limit)
        self.api("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room_id)}", {})
        log(f"joined the {what} {room_id} (name {name!r})")
        return room_id

    def send_text(self, room_id, text):
        txn = uuid.uuid4().hex
        path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/send/m.room.message/{txn}"
        return self.api("PUT", path, {"msgtype": "m.text", "body": text})["event_id"]

    def find_message(self, room_id, sender, contains, msgtype=None, after=0):
        for event_room, event in self.events[after:]:
            content = event.get("content", {})
            if (event_room == room_id and event.get("type") == "m.room.message" and event.get("sender") == sender
                    and contains in content.get("body", "")
                    and (msgtype is None or content.get("msgtype") == msgtype)):
                return event
        return None

    def command(self, room_id, bot, text, reply, limit=20):
        """Sends a bridge command and waits for the bot's notice containing
        reply: heisenbridge handles the events of a transaction concurrently,
        so commands that depend on each other go one at a time."""
        mark = len(self.events)
        self.send_text(room_id, text)
        log(f"sent command {text!r}")
        if reply is None:
            return
        self.wait(f"the bridge's answer {reply!r} to {text!r}",
                  lambda: self.find_message(room_id, bot, reply, "m.notice", mark), limit)

    def notices(self, sender, count=15):
        found = [(r, e["content"].get("body", "")) for r, e in self.events
                 if e.get("sender") == sender and e.get("type") == "m.room.message"]
        return found[-count:]


# --- a raw IRC client ----------------------------------------------------------


class IrcClient:
    def __init__(self, port, nick):
        self.nick = nick
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.lines = []  # every line received, for waits that look back
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :Estuary interop IRC user")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def wait(self, what, check, limit):
        """Reads until check(line) holds for a received line (earlier ones
        included); answers PINGs meanwhile."""
        for line in self.lines:
            if check(line):
                return line
        end = time.monotonic() + remaining(limit)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise Failure(f"IRC: timed out after {limit} s waiting for {what}; last lines: {self.lines[-8:]}")
            self.sock.settimeout(min(left, 2))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            if not data:
                raise Failure(f"IRC: server closed the connection waiting for {what}; last lines: {self.lines[-8:]}")
            self.buffer += data
            while b"\r\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\r\n", 1)
                line = raw.decode(errors="replace")
                if line.startswith("PING "):
                    self.send("PONG " + line[5:])
                    continue
                self.lines.append(line)
                if check(line):
                    return line

    def close(self):
        try:
            self.send("QUIT :done")
        except OSError:
            pass
        self.sock.close()


def irc_words(line):
    """(prefix, command, params) of an IRC line; the trailing param keeps spaces."""
    prefix = ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
    head, _, trailing = line.partition(" :")
    words = head.split()
    params = words[1:] + ([trailing] if " :" in line else [])
    return prefix, (words[0] if words else ""), params


# --- the scenario --------------------------------------------------------------


def load_yaml(path):
    with open(path) as f:
        return YAML(typ="safe").load(f)


def registration(base, scratch, admin_token):
    """The registration file heisenbridge runs with, known to the homeserver."""
    mode = os.environ.get("BRIDGE_REGISTRATION_MODE", "admin-api")
    if mode == "preloaded":
        path = os.environ.get("BRIDGE_REGISTRATION_FILE")
        if not path or not os.path.isfile(path):
            raise Failure("BRIDGE_REGISTRATION_MODE=preloaded needs BRIDGE_REGISTRATION_FILE (an existing file)")
        log(f"using the registration the homeserver preloaded: {path}")
        return path
    if mode != "admin-api":
        raise Failure(f"unknown BRIDGE_REGISTRATION_MODE {mode!r} (admin-api or preloaded)")
    path = os.path.join(scratch, "heisenbridge.yaml")
    if os.path.exists(path):
        os.remove(path)  # heisenbridge refuses to overwrite a registration
    port = free_port()
    generated = subprocess.run(
        [sys.executable, "-m", "heisenbridge", "-c", path, "--generate", "-l", "127.0.0.1", "-p", str(port)],
        capture_output=True, text=True, timeout=remaining(30))
    if generated.returncode != 0:
        raise Failure(f"heisenbridge --generate failed: {generated.stdout}{generated.stderr}")
    with open(path, "rb") as f:
        body = f.read()
    status, answer = http("POST", f"{base}/_estuary/admin/v1/appservices", body, admin_token,
                          content_type="application/yaml")
    if status != 200 or "id" not in answer:
        raise Failure(f"POST /_estuary/admin/v1/appservices: {status} {answer}")
    log(f"registered the appservice through the admin API: id {answer['id']!r}")
    return path


def wait_for_log(process, path, text, what, limit):
    end = time.monotonic() + remaining(limit)
    while time.monotonic() < end:
        with open(path, errors="replace") as f:
            if text in f.read():
                return
        if process.poll() is not None:
            raise Failure(f"{what} exited with status {process.returncode}")
        time.sleep(0.3)
    raise Failure(f"{what}: no {text!r} in its log after {limit} s")


def scenario(base, scratch):
    irc_port = free_port()
    start_ngircd(scratch, irc_port)
    log(f"ngircd listening on 127.0.0.1:{irc_port}")

    # The first account is Estuary's admin; the owner is an ordinary user.
    admin_id, admin_token = register(base, ADMIN)
    owner_id, owner_token = register(base, OWNER)
    server_name = owner_id.split(":", 1)[1]
    log(f"registered {admin_id} and {owner_id}")

    reg_path = registration(base, scratch, admin_token)
    reg = load_yaml(reg_path)
    bridge_port = urllib.parse.urlparse(reg["url"]).port
    bot = f"@{reg['sender_localpart']}:{server_name}"
    # Puppets are named <namespace prefix><network>_<nick> (users regex "@irc_.*").
    puppet_prefix = reg["namespaces"]["users"][0]["regex"].split(".")[0]
    puppet = f"{puppet_prefix}{NETWORK}_{IRC_NICK}:{server_name}".lower()

    # -o makes the owner's account the bridge's admin and has the bridge open
    # a control room with it at startup.
    hb_log = os.path.join(scratch, "heisenbridge.log")
    bridge = start("heisenbridge", [
        sys.executable, "-m", "heisenbridge", "-vv", "-c", reg_path, "-l", "127.0.0.1", "-p", str(bridge_port),
        "-o", owner_id, base,
    ], hb_log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for_port(bridge_port, bridge, "heisenbridge", 30)
    wait_for_log(bridge, hb_log, "bridge is now running", "heisenbridge startup", 40)
    log(f"heisenbridge up on 127.0.0.1:{bridge_port} as {bot}")

    user = MatrixUser(base, owner_id, owner_token)
    SEEN.update(user=user, bot=bot)
    # Two ways into a control room: the one the bridge opens for its owner at
    # startup (it creates the room and invites), and a DM the user opens with
    # the bot (the homeserver must push the bot's invite, with is_direct, to
    # the bridge, which then joins). Commands go to the DM.
    user.accept_invite("control room the bridge opened", bot, 30)
    control = user.api("POST", "/_matrix/client/v3/createRoom", {
        "preset": "trusted_private_chat", "is_direct": True, "invite": [bot],
    })["room_id"]
    user.wait(f"{bot} to join the DM {control}", lambda: next(
        (e for r, e in user.events if r == control and e.get("type") == "m.room.member"
         and e.get("state_key") == bot and e.get("content", {}).get("membership") == "join"), None), 20)
    log(f"the bridge joined the DM {control}")
    user.command(control, bot, f"ADDNETWORK {NETWORK}", "Network added.")
    user.command(control, bot, f"ADDSERVER {NETWORK} 127.0.0.1 {irc_port}", "Server added.")
    user.command(control, bot, f"OPEN {NETWORK}", f"You have been invited to {NETWORK}")
    network = user.accept_invite("network room", bot, 20)

    mark = len(user.events)
    user.command(network, bot, "CONNECT", None)
    user.wait("the IRC server's welcome in the network room",
              lambda: next((e for r, e in user.events[mark:] if r == network and e.get("sender") == bot
                            and any(s in e["content"].get("body", "") for s in (MOTD, "Internet Relay Network"))),
                           None), 30)
    log("the bridge is connected to ngircd")

    # The IRC user is in the channel first, so the bridge's NAMES has it.
    irc = IrcClient(irc_port, IRC_NICK)
    try:
        irc.wait("001 (welcome)", lambda l: irc_words(l)[1] == "001", 15)
        irc.send(f"JOIN {CHANNEL}")
        irc.wait(f"366 (end of NAMES) for {CHANNEL}", lambda l: irc_words(l)[1] == "366", 10)
        log(f"IRC client {IRC_NICK} joined {CHANNEL}")

        user.command(network, bot, f"JOIN {CHANNEL}", None)
        channel = user.accept_invite(f"channel room for {CHANNEL}", bot, 30)
        joined = irc.wait(f"the bridge's JOIN to {CHANNEL}", lambda l: irc_words(l)[1] == "JOIN"
                          and irc_words(l)[2][:1] == [CHANNEL] and irc_words(l)[0].split("!")[0] != IRC_NICK, 15)
        log(f"IRC saw the bridge join: {joined}")

        irc.send(f"PRIVMSG {CHANNEL} :{FROM_IRC}")
        event = user.wait(f"{FROM_IRC!r} from {puppet} in the channel room",
                          lambda: user.find_message(channel, puppet, FROM_IRC), 30)
        log(f"IRC -> Matrix ok: {event['sender']} said {event['content']['body']!r}")

        user.send_text(channel, FROM_MATRIX)
        line = irc.wait(f"PRIVMSG {CHANNEL} :{FROM_MATRIX}", lambda l: irc_words(l)[1] == "PRIVMSG"
                        and irc_words(l)[2] == [CHANNEL, FROM_MATRIX], 30)
        log(f"Matrix -> IRC ok: {line}")
    finally:
        irc.close()


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base, scratch = sys.argv[1].rstrip("/"), sys.argv[2]
    os.makedirs(scratch, exist_ok=True)

    # A hard stop on top of the bounded waits; SIGTERM/SIGINT also unwind
    # through the finally below, which stops ngircd and heisenbridge.
    def interrupt(signum, _frame):
        raise Failure(f"interrupted by {signal.Signals(signum).name}")

    signal.signal(signal.SIGALRM, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    signal.alarm(TOTAL_SECONDS + 5)
    try:
        scenario(base, scratch)
        log("interop ok: heisenbridge bridged a message each way between Matrix and ngircd")
        return 0
    except Exception as e:  # noqa: BLE001 - every failure gets the same diagnosis
        signal.alarm(0)
        print(f"FAIL after {time.monotonic() - START:.1f}s: {type(e).__name__}: {e}", file=sys.stderr)
        if not isinstance(e, Failure):
            import traceback
            traceback.print_exc()
        if SEEN:
            print(f"----- last messages from {SEEN['bot']} (room, body) -----", file=sys.stderr)
            for room_id, body in SEEN["user"].notices(SEEN["bot"]):
                print(f"{room_id}: {body[:200]!r}", file=sys.stderr)
        dump_logs()
        return 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
