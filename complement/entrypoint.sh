#!/bin/sh
# Complement's entrypoint for Estuary. Complement runs it at every container
# start (blueprint snapshots start again from the same image), so it derives
# only what belongs to this start: a TLS certificate for $SERVER_NAME signed
# by the CA Complement copies into /complement/ca/, and the server name.
set -eu

: "${SERVER_NAME:?Complement sets SERVER_NAME (hs1, hs2, ...)}"
host="${SERVER_NAME%:*}" # the server name without a port
ca_crt=/complement/ca/ca.crt
ca_key=/complement/ca/ca.key
tls=/complement/tls
mkdir -p "$tls"

cat >"$tls/ext.cnf" <<EXT
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:$host, DNS:localhost, IP:127.0.0.1
EXT

if [ -f "$ca_crt" ] && [ -f "$ca_key" ]; then
    openssl req -new -newkey rsa:2048 -noenc -subj "/CN=$host" \
        -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    openssl x509 -req -sha256 -days 7 -in "$tls/server.csr" \
        -CA "$ca_crt" -CAkey "$ca_key" -set_serial "0x$(openssl rand -hex 16)" \
        -extfile "$tls/ext.cnf" -out "$tls/server.crt"
else
    # Outside Complement (docker run by hand): a self-signed certificate.
    echo "entrypoint: no $ca_crt, using a self-signed certificate" >&2
    openssl req -x509 -newkey rsa:2048 -noenc -days 7 -subj "/CN=$host" \
        -addext "subjectAltName = DNS:$host, DNS:localhost, IP:127.0.0.1" \
        -keyout "$tls/server.key" -out "$tls/server.crt" 2>/dev/null
fi

# Federation: HTTPS on 8448, terminated here and forwarded to Estuary's
# plain-HTTP listener. Estuary cannot serve plain HTTP on one port and HTTPS
# on another yet (see README.md, "Known gaps").
socat OPENSSL-LISTEN:8448,reuseaddr,fork,verify=0,cert="$tls/server.crt",key="$tls/server.key" \
    TCP:127.0.0.1:8008 &

# Quoted, so the override is always read as a TOML string.
export ESTUARY_SERVER_NAME="\"$SERVER_NAME\""
exec /usr/local/bin/estuary --config /complement/estuary.toml
