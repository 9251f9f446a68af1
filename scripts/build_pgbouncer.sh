#!/usr/bin/env bash
# PgBouncer for the tests, built from Debian's source package (trixie) into a directory outside the repository:
# Debian 12's own PgBouncer (1.18) refuses the platform's configuration (max_prepared_statements is 1.21+; the
# CloudNativePG Pooler's image runs 1.25, the Airflow chart's 1.23).
# Both files are pinned by the SHA-256 that Debian's signed source index gives (dists/trixie/main/source/Sources.xz);
# Debian's own patches (its security fixes) are applied in their series order, as the Debian package is built.
#
#   scripts/build_pgbouncer.sh <install directory>      (make pgbouncer; the Makefile reads VERSION below)
#
# To move to a newer revision: take the Checksums-Sha256 lines of the pgbouncer stanza of that index.
set -euo pipefail

VERSION=1.24.1
DEBIAN_REVISION=1+deb13u2
POOL=https://deb.debian.org/debian/pool/main/p/pgbouncer
ORIG=pgbouncer_${VERSION}.orig.tar.gz
ORIG_SHA256=da72a3aba13072876d055a3e58dd4aba4a5de4ed6148e73033185245598fd3e0
DEBIAN=pgbouncer_${VERSION}-${DEBIAN_REVISION}.debian.tar.xz
DEBIAN_SHA256=2325bcaa2e71919d399b9e5aef5b94ff988fc1f1d296908c3937b682b7be5cbb

prefix=${1:?usage: build_pgbouncer.sh <install directory>}
case "$prefix" in /*) ;; *) prefix="$PWD/$prefix" ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch <file> <sha256>
  if ! curl --fail --silent --show-error --location --retry 3 --output "$work/$1" "$POOL/$1"; then
    echo "cannot fetch $POOL/$1: Debian keeps only the current revisions in its pool; pin the newer one" \
         "(scripts/build_pgbouncer.sh says how)" >&2
    exit 1
  fi
  echo "$2  $work/$1" | sha256sum --check --quiet
}
fetch "$ORIG" "$ORIG_SHA256"
fetch "$DEBIAN" "$DEBIAN_SHA256"

tar -xzf "$work/$ORIG" -C "$work"
source_dir="$work/pgbouncer-$VERSION"
tar -xJf "$work/$DEBIAN" -C "$source_dir"
while read -r patch; do
  case "$patch" in ''|'#'*) continue ;; esac
  patch --quiet --strip=1 --directory="$source_dir" < "$source_dir/debian/patches/$patch"
done < "$source_dir/debian/patches/series"

# libevent's resolver (no c-ares), no PAM, no systemd: what a server on loopback needs. Installed into a staging
# directory first and moved into place whole, so a failed build never leaves a binary that looks finished.
(cd "$source_dir" && ./configure --quiet --prefix="$prefix" --without-cares >/dev/null \
  && make --silent -j"$(nproc)" >/dev/null && make --silent install DESTDIR="$work/stage" >/dev/null)
"$work/stage$prefix/bin/pgbouncer" --version | head -1
rm -rf "$prefix"
mkdir -p "$(dirname "$prefix")"
mv "$work/stage$prefix" "$prefix"
