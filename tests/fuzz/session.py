"""The fuzz user's session on the server under test, for scripts/fuzz-api.

  session.py setup BASE PID   wait for the server (process PID) to answer, register
                              the fuzz user, create a room; print TOKEN USER_ID ROOM_ID
  session.py login BASE       log the fuzz user in again; print a fresh TOKEN
"""
import json, os, sys, time, urllib.request

USER, PASSWORD = "fuzzer", "correct horse battery staple"


def call(base, method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(base + path, data, headers, method=method), timeout=10) as resp:
        return json.load(resp)


def setup(base, pid):
    for _ in range(300):
        try:
            call(base, "GET", "/_matrix/client/versions")
            break
        except OSError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                sys.exit("fuzz-api: the server exited")
            time.sleep(0.1)
    else:
        sys.exit("fuzz-api: the server did not answer within 30 s")
    reg = call(base, "POST", "/_matrix/client/v3/register",
               {"username": USER, "password": PASSWORD, "auth": {"type": "m.login.dummy"}})
    room = call(base, "POST", "/_matrix/client/v3/createRoom", {"name": "fuzz"}, reg["access_token"])
    print(reg["access_token"], reg["user_id"], room["room_id"])


def login(base):
    resp = call(base, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": USER}, "password": PASSWORD})
    print(resp["access_token"])


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup(sys.argv[2], int(sys.argv[3]))
    else:
        login(sys.argv[2])
