#!/usr/bin/env bash
# Makes the example certificates of examples/tls.yaml: a CA, a server certificate for
# localhost and secure.localhost, and a client certificate for mTLS. For trying turnpike
# out only: the keys are public (they are in the repository). Never use them for real.
set -euo pipefail
cd "$(dirname "$0")"
days=36500
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
  -subj "/CN=turnpike example CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
issue() { # name subject san eku
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days $days -out "$1.pem" \
    -extfile <(printf "subjectAltName=%s\nextendedKeyUsage=%s\n" "$3" "$4") 2>/dev/null
  rm -f "$1.csr"
}
issue server "/CN=localhost" "DNS:localhost,DNS:secure.localhost,IP:127.0.0.1" serverAuth
issue client "/CN=example-client/O=turnpike examples" "URI:spiffe://example/client,DNS:client.localhost" clientAuth
rm -f ca.srl ca.key
echo "wrote $(pwd)/{ca,server,client}.pem and keys"
