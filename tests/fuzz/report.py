"""Summarise schemathesis NDJSON reports: every 5xx response and every request
that got no response (timeout, connection reset, server crash).

Prints, once per (method, path, outcome), the first request that did it as a
curl command ($TOKEN stands for the fuzz user's access token) and the
response, then exits 1 if there was any (or a run did not finish), else 0.
usage: report.py REPORT.ndjson...
"""
import base64, json, os, shlex, sys


def decode(blob, limit=800):
    if not blob:
        return ""
    raw = base64.b64decode(blob["$base64"]) if "$base64" in blob else str(blob.get("string", "")).encode()
    s = raw.decode("utf-8", "backslashreplace")
    return s if len(s) <= limit else s[:limit] + f"... ({len(raw)} bytes in all)"


def curl(req):
    cmd = ["curl", "-sS", "-X", req["method"]]
    for name, values in req.get("headers", {}).items():
        if name.lower() == "authorization":
            cmd += ["-H", "Authorization: Bearer $TOKEN"]
        elif name.lower() not in ("user-agent", "accept", "accept-encoding", "connection", "content-length"):
            cmd += ["-H", f"{name}: {values[0]}"]
    body = decode(req.get("body"), limit=10**6)
    if body:
        cmd += ["--data-binary", body]
    cmd.append(req["uri"])
    # Double quotes around the header so that $TOKEN expands in a shell.
    return " ".join(shlex.quote(c) for c in cmd).replace("'Authorization: Bearer $TOKEN'", '"Authorization: Bearer $TOKEN"')


def main(paths):
    found = {}  # (method path, outcome) -> [count, first request, response]
    network_errors = {}  # operation label -> last error message
    incomplete = []  # a schemathesis run that did not finish proves nothing
    for path in paths:
        events = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
        if not any("EngineFinished" in event for event in events):
            incomplete.append(path)
        for event in events:
            if "NonFatalError" in event:
                e = event["NonFatalError"]
                network_errors[e["label"]] = f'{e["value"]["type"]}: {e["value"]["message"]}'
            if "ScenarioFinished" not in event:
                continue
            recorder = event["ScenarioFinished"]["recorder"]
            for case_id, interaction in (recorder.get("interactions") or {}).items():
                req, resp = interaction["request"], interaction.get("response")
                if resp is not None and resp["status_code"] < 500:
                    continue
                case = recorder["cases"][case_id]["value"]
                # The case names the spec path; the method may differ (schemathesis
                # also probes unsupported methods).
                op = f'{req["method"]} {case["path"]}'
                outcome = f'HTTP {resp["status_code"]}' if resp else "NO RESPONSE"
                if resp:
                    answer = decode(resp.get("content"))
                else:
                    answer = network_errors.get(recorder["label"], "(no response)")
                # Values taken from earlier responses (e.g. an ID that a POST created)
                # mean the request alone may not reproduce: name their source.
                for draw in case.get("meta", {}).get("pool_draws", []):
                    answer += f'\n(`{draw["parameter_name"]}` came from a response of {draw["source_operation"]})'
                entry = found.setdefault((op, outcome), [0, curl(req), answer])
                entry[0] += 1
    for (op, outcome), (count, request, answer) in sorted(found.items()):
        print(f"== {outcome}: {op} ({count} request(s)); first one:\n  {request}")
        print("  -> " + answer.replace("\n", "\n     ") + "\n")
    print(f"fuzz-api: {len(found)} operation(s) with a 5xx response or no response")
    for path in incomplete:
        print(f"fuzz-api: schemathesis did not finish, no verdict from {path}")
    return 1 if found or incomplete else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
