#!/usr/bin/env bash
# make-test-certs.sh: a throw-away CA, a broker certificate and a client certificate, for TEST BENCHES ONLY.
#
#   deploy/make-test-certs.sh [OUT_DIR] [CLIENT_NAME]      (defaults: ./certs, client)
#
# Writes into OUT_DIR:
#   ca.crt, ca.key              the CA; kept when ca.key exists already, so later runs add clients to it
#   broker.crt, broker.key      CN=localhost, subjectAltName DNS:localhost, IP:127.0.0.1 (+ $BROKER_SANS);
#                               kept when broker.crt exists (delete both to reissue, e.g. with new names)
#   CLIENT_NAME.crt, .key       CN=CLIENT_NAME, for brokers with require_certificate true
# Keys are EC P-256, unencrypted, mode 0600. Extra broker names: BROKER_SANS="DNS:line1-pc,IP:10.0.0.5".
# Validity: DAYS (default 825) for broker and client, 10 years for the CA.
#
# Not for production: the CA key sits unprotected next to the certificates, and nothing here revokes,
# rotates or tracks what was issued. A line's real certificates come from the plant's PKI.
#
# mosquitto (see deploy/mosquitto/mosquitto.conf):  cafile ca.crt / certfile broker.crt / keyfile broker.key
# inspector (mqtt.tls):  enabled: true, ca_file: ca.crt, cert_file: client.crt, key_file: client.key
set -euo pipefail

out=${1:-./certs}
client_name=${2:-client}
days=${DAYS:-825}
if [[ ! $client_name =~ ^[A-Za-z0-9_.-]+$ || $client_name == ca || $client_name == broker ]]; then
    echo "make-test-certs.sh: CLIENT_NAME must be letters, digits, _ . - and not ca or broker: $client_name" >&2
    exit 2
fi
sans="DNS:localhost,IP:127.0.0.1${BROKER_SANS:+,$BROKER_SANS}"

command -v openssl >/dev/null || { echo "make-test-certs.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$out"
cd "$out"
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [[ ! -f ca.key ]]; then
    newkey ca.key
    openssl req -new -x509 -key ca.key -out ca.crt -days 3650 -subj "/CN=inspector test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash"
    echo "created CA: $out/ca.crt"
else
    echo "reusing CA: $out/ca.crt"
fi

# issue NAME CN EXTENSIONS: NAME.key and NAME.crt signed by the CA
issue() {
    local name=$1 cn=$2 ext=$3
    newkey "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
    printf '%s\n' "$ext" >"$work/$name.ext"
    openssl x509 -req -in "$work/$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -CAserial "$work/ca.srl" \
        -days "$days" -sha256 -extfile "$work/$name.ext" -out "$name.crt" 2>/dev/null
    echo "issued $out/$name.crt (CN=$cn)"
}

common="basicConstraints=critical,CA:FALSE
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash"
if [[ ! -f broker.crt ]]; then
    issue broker localhost "$common
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth
subjectAltName=$sans"
else
    echo "keeping $out/broker.crt"
fi
issue "$client_name" "$client_name" "$common
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=clientAuth"

chmod 0644 ca.crt broker.crt "$client_name.crt"
chmod 0600 ca.key broker.key "$client_name.key"
openssl verify -CAfile ca.crt broker.crt "$client_name.crt" >/dev/null
echo "done; test-bench certificates only (see the header of $0)"
