#!/usr/bin/env bash
# The lab's database image, docker.io/cedana-lab/postgres:15: Debian bookworm's PostgreSQL 15
# server with its own default settings, built from Debian's packages without any registry.
# The packages (the server, its client, and the libraries they link, which `ldd` checks below)
# are downloaded once into $CEDANA_CACHE and unpacked into a tree with busybox for a shell; the
# image starts /usr/local/bin/pg-start: initdb on the first start, then the postmaster in the
# foreground. It runs as the postgres user (uid 999) of the image's /etc/passwd.
# Usage: lab-image-postgres.sh OUT_DIR (prints the archive's path on stdout)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
out=$1
mkdir -p "$out"
PACKAGES=(postgresql-15 postgresql-client-15 libpq5 tzdata libaudit1 libbsd0 libbz2-1.0 libc6
  libcap-ng0 libcap2 libcom-err2 libcrypt1 libffi8 libgcc-s1 libgcrypt20 libgmp10 libgnutls30
  libgpg-error0 libgssapi-krb5-2 libhogweed6 libicu72 libidn2-0 libk5crypto3 libkeyutils1
  libkrb5-3 libkrb5support0 libldap-2.5-0 liblz4-1 liblzma5 libmd0 libnettle8 libp11-kit0
  libpam0g libpcre2-8-0 libreadline8 libsasl2-2 libselinux1 libssl3 libstdc++6 libsystemd0
  libtasn1-6 libtinfo6 libunistring2 libuuid1 libxml2 libxslt1.1 libzstd1 zlib1g)
debs="$CEDANA_CACHE/debs/postgres"
key=$( (cat "$0"; printf '%s\n' "${PACKAGES[@]}") | sha256sum | cut -c1-12)
tar="$out/postgres-$key.tar"
if [ ! -f "$tar" ]; then
  mkdir -p "$debs"
  (cd "$debs" && apt-get download "${PACKAGES[@]}" >/dev/null 2>&1) \
    || die "apt-get download of PostgreSQL 15's packages failed (is bookworm's archive reachable?)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  t="$work/tree"
  mkdir -p "$t"
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$t"; done
  rm -rf "$t/usr/share/doc" "$t/usr/share/man" "$t/usr/share/locale" "$t/usr/share/lintian"
  bin="$t/usr/lib/postgresql/15/bin"
  missing=$(LD_LIBRARY_PATH="$t/usr/lib/x86_64-linux-gnu:$t/lib/x86_64-linux-gnu" \
    ldd "$bin/postgres" "$bin/initdb" "$bin/psql" | grep "not found" || true)
  [ -z "$missing" ] || die "PostgreSQL's image lacks libraries: $missing"
  mkdir -p "$t/bin" "$t/etc" "$t/tmp" "$t/usr/local/bin" "$t/var/run/postgresql" \
    "$t/var/lib/postgresql/data"
  chmod 1777 "$t/tmp"
  install -m 0755 /bin/busybox "$t/bin/busybox"
  for applet in sh cat ls ps grep sleep id; do ln -sf busybox "$t/bin/$applet"; done
  printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/sh\n' >"$t/etc/passwd"
  printf 'root:x:0:\npostgres:x:999:\n' >"$t/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$t/etc/nsswitch.conf"
  cat >"$t/usr/local/bin/pg-start" <<'SCRIPT'
#!/bin/sh
# initdb on the first start, then the server in the foreground, with Debian's defaults
PGDATA=${PGDATA:-/var/lib/postgresql/data/pgdata}
[ -s "$PGDATA/PG_VERSION" ] || /usr/lib/postgresql/15/bin/initdb -D "$PGDATA" -U postgres >/dev/null
exec /usr/lib/postgresql/15/bin/postgres -D "$PGDATA"
SCRIPT
  chmod 0755 "$t/usr/local/bin/pg-start"
  python3 "$here/build_image.py" --tree "$t" --name "$POSTGRES_IMAGE" --out "$tar" \
    --cmd '["/usr/local/bin/pg-start"]' >/dev/null
  find "$out" -maxdepth 1 -name 'postgres-*.tar' ! -name "postgres-$key.tar" -delete
fi
echo "$tar"
