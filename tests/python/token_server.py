"""A registry token server (the distribution spec's token authentication) for the bearer-auth
test: it issues ES256 JWTs, its certificate in the x5c header, to one user:password.
Usage: token_server.py PORT CERT_OUT USER PASSWORD   (listens on 127.0.0.1:PORT)"""
import base64
import datetime
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

PORT, CERT_OUT, USER, PASSWORD = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podlet-e2e-token")])
now = datetime.datetime.utcnow()
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(1)
    .not_valid_before(now - datetime.timedelta(hours=1))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(key, hashes.SHA256())
)
with open(CERT_OUT, "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(scopes, service):
    access = []
    for scope in scopes:
        typ, name, actions = scope.split(":")
        access.append({"type": typ, "name": name, "actions": actions.split(",")})
    der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    header = {"typ": "JWT", "alg": "ES256", "x5c": [der]}
    t = int(time.time())
    claims = {"iss": "podlet-e2e", "sub": USER, "aud": service, "exp": t + 300, "nbf": t - 10,
              "iat": t, "jti": os.urandom(8).hex(), "access": access}
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
    return signing + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization", "") != want:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        q = parse_qs(urlparse(self.path).query)
        body = json.dumps({"token": token(q.get("scope", []), q.get("service", [""])[0])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", PORT), Handler)
print("serving", flush=True)
server.serve_forever()
