#!/bin/sh
# Install pinfold as a systemd service (`make install-service` runs this as root).
#
#   1. a virtual environment in $PREFIX (default /opt/pinfold) with pinfold
#      installed from this source tree, linked as $BINDIR/pinfold
#      (default /usr/local/bin/pinfold, the unit's ExecStart);
#   2. /etc/systemd/system/pinfold.service and /etc/sysusers.d/pinfold.conf,
#      then `systemd-sysusers` creates the pinfold user and group;
#   3. the home /var/lib/pinfold (unless it exists): `pinfold init`, rpc.socket
#      set to /run/pinfold/rpc.sock (the unit's RuntimeDirectory), or the
#      config.toml given as $CONFIG, owned by pinfold;
#   4. `systemctl daemon-reload` and `systemctl enable --now pinfold`
#      (only `enable` with --no-start; skipped when systemd is not running).
#
# Running it again upgrades the package and the unit and keeps the home.
#
# Environment:
#   PREFIX     virtual environment (default /opt/pinfold)
#   BINDIR     where the `pinfold` link goes (default /usr/local/bin)
#   PYTHON     interpreter that creates the venv (default python3, >= 3.11)
#   CONFIG     a config.toml to install in a new home (e.g. an edited deploy/config.toml)
#   DESTDIR    staging root: install there, create the user in $DESTDIR/etc,
#              never touch systemd (for packaging and tests)
#   PINFOLD    an existing pinfold executable to use instead of building the venv
set -eu

usage() { echo "usage: $0 [--no-start]" >&2; exit 2; }
START=yes
for arg in "$@"; do
    case "$arg" in
        --no-start) START=no ;;
        *) usage ;;
    esac
done

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/pinfold}
BINDIR=${BINDIR:-/usr/local/bin}
PYTHON=${PYTHON:-python3}
STATE=/var/lib/pinfold
SOCKET=/run/pinfold/rpc.sock

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    echo "install-service: run as root (or set DESTDIR for a staged install)" >&2
    exit 1
fi

# 1. The package.
if [ -n "${PINFOLD:-}" ]; then
    BIN=$PINFOLD
else
    if [ ! -x "$DESTDIR$PREFIX/bin/python" ]; then
        "$PYTHON" -m venv "$DESTDIR$PREFIX"
    fi
    "$DESTDIR$PREFIX/bin/python" -m pip install --quiet --upgrade "$SRC"
    BIN=$DESTDIR$PREFIX/bin/pinfold
fi
install -d -m 0755 "$DESTDIR$BINDIR"
ln -sfn "${PINFOLD:-$PREFIX/bin/pinfold}" "$DESTDIR$BINDIR/pinfold"
VENV_PY=$(dirname "$BIN")/python

# 2. Unit and user.
install -D -m 0644 "$SRC/deploy/pinfold.service" "$DESTDIR/etc/systemd/system/pinfold.service"
install -D -m 0644 "$SRC/deploy/pinfold.sysusers" "$DESTDIR/etc/sysusers.d/pinfold.conf"
if [ -n "$DESTDIR" ]; then
    systemd-sysusers --root="$DESTDIR" pinfold.conf
else
    systemd-sysusers pinfold.conf
fi

# 3. The home, once.
if [ ! -f "$DESTDIR$STATE/config.toml" ]; then
    install -d -m 0750 "$DESTDIR$STATE"
    "$BIN" --home "$DESTDIR$STATE" init >/dev/null
    if [ -n "${CONFIG:-}" ]; then
        install -m 0640 "$CONFIG" "$DESTDIR$STATE/config.toml"
    fi
    # The socket lives in the unit's RuntimeDirectory; the loader validates the file.
    "$VENV_PY" - "$DESTDIR$STATE/config.toml" "$SOCKET" <<'EOF'
import sys
from pathlib import Path

from pinfold.config import load, render, replace

path, socket = Path(sys.argv[1]), sys.argv[2]
config = load(path)
if not config.rpc.socket:
    path.write_text(render(replace(config, rpc={"socket": socket})))
EOF
    chmod 0640 "$DESTDIR$STATE/config.toml"
    if [ -z "$DESTDIR" ]; then
        chown -R pinfold:pinfold "$STATE"
    fi
    echo "install-service: initialised $STATE (peer ID: see \`pinfold --home $STATE id\`)"
fi

# 4. systemd.
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable pinfold.service
    if [ "$START" = yes ]; then
        systemctl restart pinfold.service  # starts it, or picks up an upgraded package
    fi
elif [ -z "$DESTDIR" ]; then
    echo "install-service: systemd is not running here; start pinfold.service on the target host" >&2
fi
echo "install-service: done"
