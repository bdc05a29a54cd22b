"""Environment for the Synapse federation interop test: a test CA, Synapse's
configuration, and a readiness probe.

Run with the Python of the Synapse venv that scripts/setup-interop prints as
INTEROP_SYNAPSE_PYTHON: it has `cryptography`, `signedjson` and `yaml`, all
Synapse dependencies, so this file needs nothing else.

    python federation_env.py ca DIR
        DIR/ca.pem, DIR/ca.key: a throwaway CA (ECDSA P-256).
        DIR/localhost.pem, DIR/localhost.key: a leaf signed by it for
        DNS:localhost, IP:127.0.0.1 and IP:::1, keys as PKCS#8 PEM
        ("BEGIN PRIVATE KEY"), which OpenSSL (Twisted) and rustls both load.

    python federation_env.py synapse-config --dir D --port P \
            --ca CA.pem --cert C.pem --key K.pem [--default-room-version V]
        D/homeserver.yaml, D/log.yaml and D/signing.key for server_name
        "localhost:P", one TLS listener on 127.0.0.1:P serving the client and
        federation APIs (the latter includes /_matrix/key/v2/server).

    python -m synapse.app.homeserver -c D/homeserver.yaml
        starts that Synapse in the foreground (the caller owns the process and
        kills it by its pid); it logs to D/homeserver.log.

    python federation_env.py wait-ready --url https://localhost:P --ca CA.pem \
            [--timeout 60]
        polls GET /_matrix/client/versions until it answers 200; exits 1 after
        the timeout.

A server name with an explicit port ("localhost:P") makes Synapse connect to
https://localhost:P directly, with no .well-known or SRV lookup, and verify the
certificate for "localhost" against federation_custom_ca_list only.
"""

import argparse
import datetime
import ipaddress
import json
import os
import secrets
import ssl
import sys
import time
import urllib.request

VALIDITY_BEFORE = datetime.timedelta(days=1)
VALIDITY_AFTER = datetime.timedelta(days=30)


def _unlimited():
    """A rate limit nothing in a test reaches (a fresh dict each time, so the
    YAML has no anchors)."""
    return {"per_second": 10000, "burst_count": 100000}


def _write_private(path, data):
    """Writes a private key readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key):
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject, issuer, public_key):
    """A certificate builder with the fields the CA and the leaf share."""
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - VALIDITY_BEFORE)
        .not_valid_after(now + VALIDITY_AFTER)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(out_dir):
    """Writes a CA and a localhost leaf it signed.

    webpki (rustls) wants a v3 CA with basicConstraints CA:TRUE and keyCertSign,
    and a leaf with a subjectAltName (it ignores the CN) and, if it has an
    extendedKeyUsage, serverAuth in it; OpenSSL is content with the same.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(out_dir, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Estuary interop test CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    leaf_cert = (
        _builder(leaf_name, ca_name, leaf_key.public_key())
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    with open(os.path.join(out_dir, "ca.pem"), "wb") as f:
        f.write(ca_cert.public_bytes(Encoding.PEM))
    _write_private(os.path.join(out_dir, "ca.key"), _key_pem(ca_key))
    with open(os.path.join(out_dir, "localhost.pem"), "wb") as f:
        f.write(leaf_cert.public_bytes(Encoding.PEM))
    _write_private(os.path.join(out_dir, "localhost.key"), _key_pem(leaf_key))


def _log_config(log_file):
    """Python logging config: INFO to a file, unbuffered, so that a failing
    test's log is complete when it is read."""
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                "%(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": log_file,
                "encoding": "utf8",
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def _rate_limits():
    """Every client and federation rate limit Synapse has, out of reach: the
    scenario registers, joins and sends in bursts."""
    limits = {
        key: _unlimited()
        for key in (
            "rc_message", "rc_registration", "rc_registration_token_validity",
            "rc_admin_redaction", "rc_joins_per_room", "rc_key_requests",
            "rc_3pid_validation", "rc_third_party_invite", "rc_media_create",
            "rc_room_creation", "rc_reports", "rc_user_directory", "rc_profile",
            "rc_delayed_event_mgmt",
        )
    }
    limits["rc_login"] = {k: _unlimited() for k in ("address", "account", "failed_attempts")}
    limits["rc_joins"] = {k: _unlimited() for k in ("local", "remote")}
    limits["rc_invites"] = {k: _unlimited() for k in ("per_room", "per_user", "per_issuer")}
    limits["rc_presence"] = {"per_user": _unlimited()}
    limits["rc_federation"] = {
        "window_size": 1000,
        "sleep_limit": 10000,
        "sleep_delay": 1,
        "reject_limit": 100000,
        "concurrent": 1000,
    }
    return limits


def synapse_config(d, port, ca, cert, key, room_version=None):
    """The homeserver.yaml contents for Synapse at localhost:<port>, data in d."""
    d = os.path.abspath(d)
    config = {
        "server_name": f"localhost:{port}",
        "public_baseurl": f"https://localhost:{port}/",
        "pid_file": os.path.join(d, "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            }
        ],
        "tls_certificate_path": os.path.abspath(cert),
        "tls_private_key_path": os.path.abspath(key),
        "database": {"name": "sqlite3", "args": {"database": os.path.join(d, "homeserver.db")}},
        "log_config": os.path.join(d, "log.yaml"),
        "media_store_path": os.path.join(d, "media_store"),
        "signing_key_path": os.path.join(d, "signing.key"),
        # Outbound federation: trust the test CA alone, and let requests reach
        # loopback, which the default ip_range_blacklist forbids.
        "federation_verify_certificates": True,
        "federation_custom_ca_list": [os.path.abspath(ca)],
        "ip_range_blacklist": [],
        "ip_range_whitelist": ["127.0.0.1", "::1"],
        # Fetch the other server's keys from it, not from matrix.org.
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "serve_server_wellknown": False,
        # A destination that failed once (the server under test restarting,
        # or refusing a request) is retried after a second, not ten minutes.
        "federation": {
            "destination_min_retry_interval": "1s",
            "destination_max_retry_interval": "5s",
            "max_short_retry_delay": "1s",
            "max_long_retry_delay": "5s",
            "client_timeout": "20s",
        },
        "report_stats": False,
        "enable_metrics": False,
        "url_preview_enabled": False,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "presence": {"enabled": True},
        # Its room directory is served to other servers (step r); Synapse
        # keeps it to itself by default.
        "allow_public_rooms_over_federation": True,
        "room_list_publication_rules": [{"action": "allow"}],
        "macaroon_secret_key": secrets.token_urlsafe(32),
        "form_secret": secrets.token_urlsafe(32),
        "registration_shared_secret": secrets.token_urlsafe(32),
        **_rate_limits(),
    }
    if room_version:
        # Rooms B creates (step f) must be of a version the server under test knows.
        config["default_room_version"] = room_version
    return config


def write_synapse_config(d, port, ca, cert, key, room_version=None):
    """Writes D/homeserver.yaml, D/log.yaml and a fresh D/signing.key."""
    import signedjson.key
    import yaml

    os.makedirs(os.path.join(d, "media_store"), exist_ok=True)
    config = synapse_config(d, port, ca, cert, key, room_version)
    with open(os.path.join(d, "homeserver.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    with open(config["log_config"], "w") as f:
        yaml.safe_dump(_log_config(os.path.join(os.path.abspath(d), "homeserver.log")), f)
    signing_key = signedjson.key.generate_signing_key("a_" + secrets.token_hex(2))
    fd = os.open(config["signing_key_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        signedjson.key.write_signing_keys(f, [signing_key])


def wait_ready(url, ca, timeout):
    """Polls the client versions endpoint until it answers: Synapse takes a few
    seconds to create its database and bind. True once it is up."""
    context = ssl.create_default_context(cafile=ca)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                url.rstrip("/") + "/_matrix/client/versions", context=context, timeout=5
            ) as response:
                json.load(response)
                return True
        except (OSError, ValueError) as e:  # URLError, HTTPError and ssl errors are OSErrors.
            last = e
        time.sleep(0.25)
    print(f"{url} not ready after {timeout} s: {last}", file=sys.stderr)
    return False


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("ca", help="write a CA and a localhost leaf into DIR")
    ca.add_argument("dir")
    config = sub.add_parser("synapse-config", help="write a Synapse config into --dir")
    config.add_argument("--dir", required=True)
    config.add_argument("--port", required=True, type=int)
    config.add_argument("--ca", required=True)
    config.add_argument("--cert", required=True)
    config.add_argument("--key", required=True)
    config.add_argument("--default-room-version",
                        help="room version of the rooms Synapse creates (default: Synapse's)")
    ready = sub.add_parser("wait-ready", help="wait until a homeserver answers")
    ready.add_argument("--url", required=True)
    ready.add_argument("--ca", required=True)
    ready.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)

    if args.command == "ca":
        make_ca(args.dir)
    elif args.command == "synapse-config":
        write_synapse_config(args.dir, args.port, args.ca, args.cert, args.key,
                             args.default_room_version)
    elif args.command == "wait-ready":
        return 0 if wait_ready(args.url, args.ca, args.timeout) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
