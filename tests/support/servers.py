"""Real PostgreSQL, PgBouncer and Redis servers on loopback, from the Debian packages.

Each server listens on a free 127.0.0.1 port in a temporary directory and is stopped when the test
session ends. PostgreSQL and PgBouncer refuse to run as root; under root they run as the `postgres`
user the Debian package creates.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.database.managed import pgbouncer_users
from support.availability import unavailable


class ServerUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ServerUnavailable(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def postgres_bin() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise ServerUnavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    return Path(candidates[-1]).parent


def _as_postgres_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _hand_to_postgres_user(*paths: Path) -> None:
    if os.geteuid() == 0:
        for path in paths:
            shutil.chown(path, "postgres", "postgres")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    _hand_to_postgres_user(cert_path, key_path)
    return cert_path, key_path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


@dataclass
class CertificateAuthority:
    """A test certificate authority: what RDS's or ElastiCache's CA is to their clients, in miniature."""
    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str) -> "CertificateAuthority":
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
        return cls(name=name, key=key, certificate=certificate)

    def write(self, path: Path) -> Path:
        """The CA's certificate as PEM (a trust store of one), readable by the `postgres` user."""
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        _hand_to_postgres_user(path)
        return path

    def issue(self, directory: Path, host_name: str, stem: str = "server") -> tuple[Path, Path]:
        """A server certificate for `host_name` (in the subject alternative name, where verifiers look),
        as <stem>.crt and <stem>.key in `directory`, the key 0600 and both owned by the `postgres` user."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)]))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        _hand_to_postgres_user(directory, cert_path, key_path)
        return cert_path, key_path


@dataclass
class PostgresServer:
    port: int
    socket_dir: Path
    data_dir: Path
    bin_dir: Path

    def stop(self) -> None:
        subprocess.run(_as_postgres_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                                          "stop"]), capture_output=True, check=False)

    def superuser_sql(self, statement: str, *params: str) -> None:
        import psycopg2
        connection = psycopg2.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, params or None)
        finally:
            connection.close()


def start_postgres(workdir: Path, certificate: Optional[tuple[Path, Path]] = None) -> PostgresServer:
    """`certificate`: (cert, key) the server presents, readable by the `postgres` user; by default a
    self-signed one for `localhost`."""
    bin_dir = postgres_bin()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir, socket_dir = workdir / "data", workdir / "socket"
    socket_dir.mkdir()
    _hand_to_postgres_user(workdir, socket_dir)
    subprocess.run(_as_postgres_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                                      "--auth-local=trust", "--auth-host=reject"]),
                   check=True, capture_output=True)
    cert, key = certificate or self_signed_certificate(data_dir)
    # Password logins over TLS only, as CloudNativePG serves them.
    (data_dir / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
        "host all all 127.0.0.1/32 reject\n")
    port = free_port()
    options = (f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c ssl=on "
               f"-c ssl_cert_file={cert} -c ssl_key_file={key}")
    subprocess.run(_as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-w",
                                      "-l", str(workdir / "postgres.log"), "start"]),
                   check=True, capture_output=True)
    return PostgresServer(port=port, socket_dir=socket_dir, data_dir=data_dir, bin_dir=bin_dir)


@dataclass
class ProcessServer:
    """A server run in the foreground by this test session (PgBouncer, Redis)."""
    port: int
    process: subprocess.Popen
    # PgBouncer 1.23+ takes SIGTERM as "wait for every client to disconnect"; SIGQUIT is its immediate shutdown
    # (doc/usage.md, Signals).
    stop_signal: int = signal.SIGTERM

    def stop(self) -> None:
        self.process.send_signal(self.stop_signal)
        self.process.wait(timeout=10)


# What CloudNativePG 1.30.0 writes into a Pooler's pgbouncer.ini besides the Pooler's own spec
# (pkg/management/pgbouncer/config/config.go, defaultPgBouncerParameters; strings.go, buildPgBouncerParameters):
# these defaults where the Pooler sets none, its ignore_startup_parameters appended to the default's.
CNPG_POOLER_DEFAULTS = {"log_stats": "0", "auth_type": "hba", "client_tls_sslmode": "prefer",
                        "server_tls_sslmode": "verify-ca", "ignore_startup_parameters": "extra_float_digits,options"}


def pooler_pgbouncer_parameters(pooler: dict) -> dict[str, str]:
    """The [pgbouncer] parameters CloudNativePG derives from a Pooler's `spec.pgbouncer`, before the ones it forces
    (listen address and port, admin user, hba and TLS file paths: the test's own here)."""
    parameters = {"pool_mode": pooler["poolMode"], **(pooler.get("parameters") or {})}
    for key, default in CNPG_POOLER_DEFAULTS.items():
        if key not in parameters:
            parameters[key] = default
        elif key == "ignore_startup_parameters":
            parameters[key] = f"{default},{parameters[key]}"
    return parameters


def start_pgbouncer(workdir: Path, postgres: PostgresServer, user: str, password: str,
                    database: str, pooler: dict, server_connections: Optional[int] = None,
                    other_users: Optional[dict[str, str]] = None) -> ProcessServer:
    """PgBouncer configured as CloudNativePG configures the program's Pooler (`pooler`: its `spec.pgbouncer`), on
    loopback. What differs: users log in from an auth file with SCRAM instead of the operator's auth_query and hba
    file; the server's certificate (self-signed here) is required, not verified against the cluster's CA; and of
    the operator's forced settings only TLS towards clients is kept (no unix socket, admin user or CA files).
    `server_connections` (default_pool_size) small makes clients share server connections, as they do under
    load. `other_users` may log in too (user: password)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_certificate(workdir)
    userlist = workdir / "userlist.txt"
    # The auth file as the program writes PgBouncer's (components/database/managed.py).
    userlist.write_text(pgbouncer_users(user, password)
                        + "".join(pgbouncer_users(name, secret) for name, secret in (other_users or {}).items()))
    userlist.chmod(0o600)
    port = free_port()
    parameters = {**pooler_pgbouncer_parameters(pooler), "auth_type": "scram-sha-256", "server_tls_sslmode": "require"}
    if server_connections is not None:
        parameters["default_pool_size"] = str(server_connections)
    return run_pgbouncer(workdir, (
        "[databases]\n"
        f"{database} = host=127.0.0.1 port={postgres.port} dbname={database}\n"
        "[pgbouncer]\n"
        + "".join(f"{name} = {value}\n" for name, value in parameters.items())
        + f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_file = {userlist}\n"
        f"client_tls_cert_file = {cert}\nclient_tls_key_file = {key}\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"), port)


def pgbouncer_binary() -> str:
    """The PgBouncer `make pgbouncer` builds (scripts/build_pgbouncer.sh), which `make test` and `make e2e` name in
    PGBOUNCER. Not Debian 12's package: its 1.18 refuses the platform's configuration (max_prepared_statements)."""
    binary = os.environ.get("PGBOUNCER")
    if not binary or not Path(binary).exists():
        raise ServerUnavailable(f"PgBouncer not found at PGBOUNCER={binary or ''} (make pgbouncer builds it)")
    return binary


def _pgbouncer_in(workdir: Path) -> str:
    """A copy of the PgBouncer binary in `workdir`: under root PgBouncer runs as the `postgres` user, who may not
    enter the directory it was built into (a home directory is often 0700)."""
    copy = workdir / "pgbouncer"
    shutil.copy2(pgbouncer_binary(), copy)
    return str(copy)


def run_pgbouncer(workdir: Path, ini: str, port: int) -> ProcessServer:
    """PgBouncer with a configuration given whole, which must listen on 127.0.0.1:`port`. The files it
    names should lie in `workdir`: everything there is handed to the `postgres` user. A PgBouncer that
    exits at start raises ServerUnavailable with what it printed."""
    workdir.mkdir(parents=True, exist_ok=True)
    binary = _pgbouncer_in(workdir)
    ini_file = workdir / "pgbouncer.ini"
    ini_file.write_text(ini)
    _hand_to_postgres_user(workdir, *workdir.rglob("*"))
    output = workdir / "pgbouncer.stderr"
    # The `postgres` user by setuid in the child rather than runuser, so that stop() signals PgBouncer itself
    # (runuser passes SIGTERM on, then sleeps 2 s before it exits).
    as_postgres: dict[str, Any] = {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
    with output.open("wb") as stderr:
        process = subprocess.Popen([binary, str(ini_file)], stdout=subprocess.DEVNULL, stderr=stderr,
                                   **as_postgres)
    try:
        wait_for_port(port, process)
    except ServerUnavailable as exc:
        process.kill()
        process.wait(timeout=10)
        raise ServerUnavailable(f"pgbouncer: {exc}: {output.read_text(errors='replace').strip()}") from exc
    return ProcessServer(port=port, process=process, stop_signal=signal.SIGQUIT)



def start_redis(workdir: Path, password: str, config: Optional[dict[str, str]] = None,
                tls: Optional[tuple[Path, Path, Path]] = None) -> ProcessServer:
    """Redis with auth; `config` adds redis.conf directives (as the chart's `redis.config` renders them).
    `tls` = (cert, key, CA): TLS only, as ElastiCache with in-transit encryption `required` serves it (no
    plaintext port; clients are not asked for certificates)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailable("redis-server not found (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    config_file = workdir / "redis.conf"
    listen = (f"port 0\ntls-port {port}\ntls-cert-file {tls[0]}\ntls-key-file {tls[1]}\n"
              f"tls-ca-cert-file {tls[2]}\ntls-auth-clients no\n") if tls else f"port {port}\n"
    config_file.write_text(f'bind 127.0.0.1\n{listen}requirepass "{escaped}"\nsave ""\nappendonly no\n'
                      f"dir {workdir}\nprotected-mode yes\n"
                      + "".join(f"{key} {value}\n" for key, value in (config or {}).items()))
    config_file.chmod(0o600)
    process = subprocess.Popen([binary, str(config_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    return ProcessServer(port=port, process=process)


def with_host_and_port(url: str, host: str, port: int) -> str:
    """The URL with only its host and port replaced. The user info is left byte for byte as published
    (split at the last `@`, which percent-encoding keeps out of the password)."""
    scheme, rest = url.split("://", 1)
    userinfo, location = rest.rsplit("@", 1)
    _, _, path = location.partition("/")
    return f"{scheme}://{userinfo}@{host}:{port}/{path}"


def unavailable_reason() -> Optional[str]:
    try:
        postgres_bin()
    except ServerUnavailable as exc:
        return str(exc)
    try:
        pgbouncer_binary()
    except ServerUnavailable as exc:
        return str(exc)
    if shutil.which("redis-server") is None:
        return "redis-server not found (apt-get install redis-server)"
    return None


@contextlib.contextmanager
def servers_session(prefix: str) -> Iterator[tuple[Path, list]]:
    """A module's servers: a fresh directory for them and a list to put each in as it starts. Without the servers
    the module is skipped, and fails in CI, where they must run; a server that will not start fails it; at the end
    every server is stopped (the last first) and the directory removed. Not pytest's tmp_path: under root that
    lies in a 0700 directory the `postgres` user cannot enter."""
    import pytest

    reason = unavailable_reason()
    if reason:
        unavailable(reason)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    started: list = []
    try:
        yield workdir, started
    except ServerUnavailable as exc:
        pytest.fail(str(exc))
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
