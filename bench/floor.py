#!/usr/bin/python3
"""pebble's floor: the least wall time one ACME scenario can take against this pebble.

A deliberately minimal ACME (RFC 8555) client for bench/run.sh. It does nothing a real client
adds on top of the protocol: every key and CSR is made before the clock starts, it keeps one
TLS connection open, polls with a 2 ms interval, answers HTTP-01 from memory and writes no
files. The clock covers the directory fetch, account registration and, per certificate,
newOrder, every authorization, the challenge responses, polling to valid, finalize, polling to
valid and the certificate download. Certificates are issued one after another.

Prints the elapsed seconds (3 decimals) on stdout; errors go to stderr with exit status 1.
Needs Debian's python3-cryptography (a dependency of certbot).

    floor.py --directory https://127.0.0.1:14000/dir --ca ca.pem --port 5002 \
             --certs "a.example.com,b.example.com c.example.com"

--certs: certificates separated by spaces, the names of one certificate by commas.
"""

import argparse
import base64
import http.client
import http.server
import json
import ssl
import sys
import threading
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

POLL_INTERVAL = 0.002
POLL_LIMIT = 30.0


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class AcmeError(Exception):
    pass


class Client:
    def __init__(self, directory: str, ca: str):
        url = urllib.parse.urlsplit(directory)
        ctx = ssl.create_default_context(cafile=ca)
        self.conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=30)
        self.directory_url = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        nums = self.key.public_key().public_numbers()
        self.jwk = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64u(nums.x.to_bytes(32, "big")),
            "y": b64u(nums.y.to_bytes(32, "big")),
        }
        digest = hashes.Hash(hashes.SHA256())
        digest.update(json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode())
        self.thumbprint = b64u(digest.finalize())
        self.kid = None
        self.nonce = None
        self.dir = {}

    def request(self, method: str, url: str, body: bytes | None = None, jose: bool = False):
        path = urllib.parse.urlsplit(url)
        target = path.path + (("?" + path.query) if path.query else "")
        headers = {"Content-Type": "application/jose+json"} if jose else {}
        self.conn.request(method, target, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        nonce = resp.getheader("Replay-Nonce")
        if nonce:
            self.nonce = nonce
        return resp, data

    def post(self, url: str, payload, retry: bool = True):
        if self.nonce is None:
            self.request("HEAD", self.dir["newNonce"])
        protected = {"alg": "ES256", "nonce": self.nonce, "url": url}
        if self.kid:
            protected["kid"] = self.kid
        else:
            protected["jwk"] = self.jwk
        p64 = b64u(json.dumps(protected).encode())
        b64 = "" if payload is None else b64u(json.dumps(payload).encode())
        der = self.key.sign(f"{p64}.{b64}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        body = json.dumps({"protected": p64, "payload": b64, "signature": sig}).encode()
        self.nonce = None
        resp, data = self.request("POST", url, body, jose=True)
        if resp.status >= 400:
            if retry and b"badNonce" in data:
                return self.post(url, payload, retry=False)
            raise AcmeError(f"POST {url}: HTTP {resp.status}: {data[:300]!r}")
        return resp, data

    def poll(self, url: str, want: str, what: str):
        deadline = time.monotonic() + POLL_LIMIT
        while True:
            _, data = self.post(url, None)
            obj = json.loads(data)
            if obj.get("status") == want:
                return obj
            if obj.get("status") == "invalid":
                raise AcmeError(f"{what} {url} became invalid: {json.dumps(obj)[:300]}")
            if time.monotonic() > deadline:
                raise AcmeError(f"{what} {url} not {want} after {POLL_LIMIT}s")
            time.sleep(POLL_INTERVAL)


def make_csr(names: list[str]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return b64u(csr.public_bytes(serialization.Encoding.DER))


def serve_http01(port: int, tokens: dict[str, str]) -> http.server.ThreadingHTTPServer:
    prefix = "/.well-known/acme-challenge/"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            value = tokens.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None
            if value is None:
                self.send_response(404)
                self.end_headers()
                return
            body = value.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(args) -> float:
    certs = [c.split(",") for c in args.certs.split()]
    csrs = [make_csr(names) for names in certs]
    client = Client(args.directory, args.ca)
    tokens: dict[str, str] = {}
    server = serve_http01(args.port, tokens)
    try:
        start = time.monotonic()
        _, data = client.request("GET", args.directory)
        client.dir = json.loads(data)
        resp, _ = client.post(client.dir["newAccount"], {"termsOfServiceAgreed": True})
        client.kid = resp.getheader("Location")
        for names, csr in zip(certs, csrs):
            resp, data = client.post(
                client.dir["newOrder"], {"identifiers": [{"type": "dns", "value": n} for n in names]}
            )
            order_url = resp.getheader("Location")
            order = json.loads(data)
            pending = []
            for authz_url in order["authorizations"]:
                _, data = client.post(authz_url, None)
                authz = json.loads(data)
                if authz["status"] == "valid":
                    continue
                chal = next(c for c in authz["challenges"] if c["type"] == "http-01")
                tokens[chal["token"]] = f"{chal['token']}.{client.thumbprint}"
                client.post(chal["url"], {})
                pending.append(authz_url)
            for authz_url in pending:
                client.poll(authz_url, "valid", "authorization")
            client.post(order["finalize"], {"csr": csr})
            order = client.poll(order_url, "valid", "order")
            _, pem = client.post(order["certificate"], None)
            if b"BEGIN CERTIFICATE" not in pem:
                raise AcmeError(f"no certificate at {order['certificate']}")
        return time.monotonic() - start
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", required=True)
    parser.add_argument("--ca", required=True, help="PEM bundle that signs pebble's TLS certificate")
    parser.add_argument("--port", type=int, default=5002, help="HTTP-01 port (pebble's httpPort)")
    parser.add_argument("--certs", required=True)
    args = parser.parse_args()
    try:
        print(f"{run(args):.3f}")
    except (AcmeError, OSError, KeyError, ValueError, StopIteration) as e:
        print(f"floor.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
