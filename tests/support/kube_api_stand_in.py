"""A stand-in for the Kubernetes API server's pod PATCH, for the workers' deletion-cost reporter: HTTPS with a
certificate for 127.0.0.1 signed by a CA of its own (the reporter verifies it as it verifies the cluster's), a
bearer token it checks, and JSON merge patches applied to the pods it holds (RFC 7386, as the API server applies
`application/merge-patch+json`). What admission would refuse is not modelled here: tests/test_worker_scale_in.py
evaluates the admission policy itself."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


class KubeApiStandIn:
    """Pods by (namespace, name); every PATCH recorded as (pod, content type, body) in `patches`."""

    def __init__(self, directory: Path, token: str = "worker-token"):
        directory.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.patches: list[tuple[str, str | None, Any]] = []
        self.ca_file, certificate, key = certificates(directory)
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PATCH(self):
                parts = self.path.strip("/").split("/")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Bearer {stand_in.token}":
                    return self._reply(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
                if parts[:3] != ["api", "v1", "namespaces"] or len(parts) != 6 or parts[4] != "pods":
                    return self._reply(404, {"kind": "Status", "code": 404})
                key = (parts[3], parts[5])
                content_type = self.headers.get("Content-Type")
                with stand_in.lock:
                    stand_in.patches.append((key[1], content_type, json.loads(body)))
                    if key not in stand_in.pods:
                        return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    if content_type != "application/merge-patch+json":
                        return self._reply(415, {"kind": "Status", "code": 415})
                    stand_in.pods[key] = merge_patch(stand_in.pods[key], json.loads(body))
                    return self._reply(200, stand_in.pods[key])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_pod(self, namespace: str, name: str, annotations: dict | None = None) -> None:
        with self.lock:
            self.pods[(namespace, name)] = {"metadata": {"name": name, "namespace": namespace,
                                                         "annotations": dict(annotations or {})}}

    def annotations(self, namespace: str, name: str) -> dict[str, str]:
        with self.lock:
            return dict(self.pods[(namespace, name)]["metadata"].get("annotations") or {})

    def service_account_dir(self, directory: Path, namespace: str = "airflow") -> Path:
        """What kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount: token, ca.crt, namespace."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "namespace").write_text(namespace)
        (directory / "token").write_text(self.token)
        (directory / "ca.crt").write_bytes(self.ca_file.read_bytes())
        return directory

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
