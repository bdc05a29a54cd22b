"""Schemathesis hooks for scripts/fuzz-api (loaded through SCHEMATHESIS_HOOKS).

/sync, /events and media downloads legitimately wait up to `timeout` /
`timeout_ms` milliseconds before answering, so a fuzzed value of hours would
look like a hang.  Clamp such values to 2 s so that the per-request timeout
only catches real hangs.  Values that do not fit in a u64 are left alone: the
server has to reject those.  The clamped value is what is sent and reported.
"""
import schemathesis

LONG_POLL_PARAMS = ("timeout", "timeout_ms")
MAX_WAIT_MS = 2000


@schemathesis.hook
def before_call(context, case, kwargs):
    for name in LONG_POLL_PARAMS:
        try:
            value = int(case.query[name])
        except (TypeError, KeyError, ValueError):
            continue  # absent, or not a number (negative testing)
        if MAX_WAIT_MS < value < 2**64:
            case.query[name] = MAX_WAIT_MS
