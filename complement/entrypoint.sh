#!/bin/sh
# Start porch the way Complement expects. Complement commits containers to
# images and starts them again, so every step here must be safe to repeat.
set -eu

: "${SERVER_NAME:?SERVER_NAME must be set to this server's name (Complement sets hs1, hs2, ...)}"

CA_CERT=/complement/ca/ca.crt
CA_KEY=/complement/ca/ca.key
TLS=/conf/tls
mkdir -p "$TLS"

# A fresh key and a certificate for $SERVER_NAME. Complement mounts its CA;
# sign with it so the test servers and Complement itself trust this server.
cat > "$TLS/server.ext" <<EXT
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:$SERVER_NAME
EXT
openssl req -new -newkey rsa:2048 -nodes -sha256 \
    -keyout "$TLS/server.key" -subj "/CN=$SERVER_NAME" -out "$TLS/server.csr" 2>/dev/null
if [ -f "$CA_CERT" ] && [ -f "$CA_KEY" ]; then
    # The serial file goes next to our files: the CA folder may be read-only.
    openssl x509 -req -sha256 -days 30 -in "$TLS/server.csr" \
        -CA "$CA_CERT" -CAkey "$CA_KEY" -CAserial "$TLS/ca.srl" -CAcreateserial \
        -extfile "$TLS/server.ext" -out "$TLS/server.crt" 2>/dev/null
    # Trust the CA for outbound requests (federation to the other servers
    # and to Complement's own mock servers).
    cp "$CA_CERT" /usr/local/share/ca-certificates/complement.crt
    update-ca-certificates >/dev/null
else
    echo "entrypoint: no CA at $CA_CERT and $CA_KEY; using a self-signed certificate" >&2
    openssl x509 -req -sha256 -days 30 -in "$TLS/server.csr" \
        -signkey "$TLS/server.key" -extfile "$TLS/server.ext" -out "$TLS/server.crt" 2>/dev/null
fi
chmod 0600 "$TLS/server.key"

export PORCH_SERVER_NAME="$SERVER_NAME"
exec /usr/local/bin/porch --config /conf/porch.toml
