#!/usr/bin/env bash
# Install (or upgrade, or remove) edge-agent as a hardened systemd service.
#
#   sudo systemd/install.sh                      # from this checkout, into /opt/edge-agent
#   sudo systemd/install.sh --version 0.2.0      # edge-agent-mcp==0.2.0 from the package index
#   sudo systemd/install.sh --uninstall [--purge]
#   DESTDIR=/tmp/stage systemd/install.sh        # stage files only (packaging, CI): no root needed
#   systemd/install.sh --destdir /tmp/stage      # the same
#
# From a checkout it builds a wheel of that checkout and installs it; with --version it installs
# the distribution edge-agent-mcp (the PyPI name edge-agent is an unrelated project's).
# Staging (DESTDIR in the environment, as with `make install DESTDIR=...`, or --destdir) writes
# only under DESTDIR: no users or groups, no systemctl, no udevadm.
# Idempotent: run it again from a newer checkout to upgrade (then restart the service). It
# never overwrites /etc/edge-agent/agent.toml. See docs/raspberry-pi.md.
set -euo pipefail

PREFIX=/opt/edge-agent
DESTDIR=${DESTDIR:-}
DIST=edge-agent-mcp
SOURCE=
VERSION=
PYTHON=${PYTHON:-python3}
EXTRAS="gpio,serial,i2c"
UNINSTALL=0
PURGE=0
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  cat <<EOF
usage: $0 [options]

  --prefix DIR     where the virtualenv goes (default /opt/edge-agent)
  --source DIR     install from this checkout (default: the one this script is in)
  --version X.Y.Z  install edge-agent-mcp==X.Y.Z from the package index instead of a
                   wheel built from a checkout
  --python PATH    the Python (>= 3.11) to build the virtualenv with (default python3); it
                   must live where the service can see it (not under /home, /root,
                   /run/user or /tmp): on Raspberry Pi OS / Debian, /usr/bin/python3
  --destdir DIR    stage every file under DIR (for packaging and CI): no users, no
                   systemctl, no udev; the venv's scripts name PREFIX, not DIR/PREFIX.
                   DESTDIR=DIR in the environment does the same
  --uninstall      stop and disable the service, remove the unit, the venv and the
                   sysusers/udev files; keeps /etc/edge-agent and /var/lib/edge-agent
  --purge          with --uninstall: also remove /etc/edge-agent, /var/lib/edge-agent and
                   local drop-ins (the edge-agent user and groups are kept)
  -h, --help       this text
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# Why the unit's sandbox would hide the path $1 from the service (exit 1 if it would not):
# ProtectHome=yes makes /home, /root and /run/user inaccessible, PrivateTmp=yes gives the
# service its own empty /tmp and /var/tmp. (ProtectSystem=strict makes the rest read-only,
# which hides nothing.)
hidden_by_unit() {
  case "$1" in
    /home|/home/*|/root|/root/*|/run/user|/run/user/*)
      echo "ProtectHome=yes in edge-agent.service hides /home, /root and /run/user from the service" ;;
    /tmp|/tmp/*|/var/tmp|/var/tmp/*)
      echo "PrivateTmp=yes in edge-agent.service gives the service its own empty /tmp and /var/tmp" ;;
    *) return 1 ;;
  esac
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --destdir) DESTDIR=${2:?--destdir needs a directory}; shift 2 ;;
    --destdir=*) DESTDIR=${1#*=}; shift ;;
    --source) SOURCE=${2:?--source needs a directory}; shift 2 ;;
    --source=*) SOURCE=${1#*=}; shift ;;
    --version) VERSION=${2:?--version needs a version}; shift 2 ;;
    --version=*) VERSION=${1#*=}; shift ;;
    --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
    --python=*) PYTHON=${1#*=}; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; UNINSTALL=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

case "$PREFIX" in
  /?*) PREFIX=${PREFIX%/} ;;
  *) die "--prefix must be an absolute path, not '$PREFIX'" ;;
esac
[ "$PREFIX" != / ] || die "--prefix / is not allowed"
if why=$(hidden_by_unit "$PREFIX"); then
  die "--prefix $PREFIX: $why; use e.g. /opt/edge-agent"
fi
if [ -n "$DESTDIR" ]; then
  mkdir -p "$DESTDIR"
  DESTDIR=$(cd "$DESTDIR" && pwd)
  [ "$DESTDIR" != / ] || DESTDIR=
fi
if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo $0 ...), or stage files with --destdir DIR"
fi

VENV=$DESTDIR$PREFIX
UNIT=$DESTDIR/etc/systemd/system/edge-agent.service
DROPINS=$DESTDIR/etc/systemd/system/edge-agent.service.d
SYSUSERS=$DESTDIR/usr/lib/sysusers.d/edge-agent.conf
UDEV=$DESTDIR/usr/lib/udev/rules.d/60-edge-agent.rules
CONFDIR=$DESTDIR/etc/edge-agent
CONFIG=$CONFDIR/agent.toml
STATEDIR=$DESTDIR/var/lib/edge-agent
DOCDIR=$VENV/share/doc/edge-agent

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
udev_running() { [ -z "$DESTDIR" ] && [ -S /run/udev/control ] && command -v udevadm >/dev/null 2>&1; }

# ------------------------------------------------------------------------------ uninstall
if [ "$UNINSTALL" = 1 ]; then
  if systemd_running; then
    say "stopping and disabling edge-agent.service"
    systemctl disable --now edge-agent.service 2>/dev/null || true
  fi
  rm -f "$UNIT" "$SYSUSERS" "$UDEV"
  if [ -d "$VENV" ]; then
    # only ever delete what is recognisably our virtualenv
    if [ -f "$VENV/pyvenv.cfg" ] && [ -e "$VENV/bin/edge-agent" ]; then
      say "removing $VENV"
      rm -rf "$VENV"
    else
      echo "install.sh: $VENV does not look like an edge-agent virtualenv; left in place" >&2
    fi
  fi
  if [ "$PURGE" = 1 ]; then
    say "purging $CONFDIR, $STATEDIR and local drop-ins"
    rm -rf "$CONFDIR" "$STATEDIR" "$DROPINS"
  fi
  if systemd_running; then
    systemctl daemon-reload
    systemctl reset-failed edge-agent.service 2>/dev/null || true
  fi
  if udev_running; then udevadm control --reload || true; fi
  say "edge-agent removed"
  if [ "$PURGE" = 0 ]; then
    echo "    kept: /etc/edge-agent (config) and /var/lib/edge-agent (state); --purge removes them"
  fi
  echo "    kept: the edge-agent user and its groups (remove with: sudo userdel edge-agent)"
  exit 0
fi

# ------------------------------------------------------------------------------ install
[ -z "$VERSION" ] || [ -z "$SOURCE" ] || die "give --source or --version, not both"
case "$VERSION" in
  [0-9]*[!0-9A-Za-z.+!-]*|[!0-9]*) die "--version $VERSION: give a version number such as 0.2.0" ;;
esac
if [ -z "$VERSION" ]; then
  SOURCE=${SOURCE:-$HERE/..}
  [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not an edge-agent checkout (no pyproject.toml); give --source DIR or --version X.Y.Z"
  SOURCE=$(cd "$SOURCE" && pwd)
fi
UNIT_SRC=$HERE/edge-agent.service
SYSUSERS_SRC=$HERE/edge-agent.sysusers
UDEV_SRC=$HERE/edge-agent.udev.rules
if [ -n "$SOURCE" ] && [ -f "$SOURCE/systemd/edge-agent.service" ]; then
  UNIT_SRC=$SOURCE/systemd/edge-agent.service
  SYSUSERS_SRC=$SOURCE/systemd/edge-agent.sysusers
  UDEV_SRC=$SOURCE/systemd/edge-agent.udev.rules
fi
for f in "$UNIT_SRC" "$SYSUSERS_SRC" "$UDEV_SRC"; do [ -f "$f" ] || die "missing $f"; done

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: sudo apt-get install -y python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); edge-agent needs Python >= 3.11 (Raspberry Pi OS bookworm has 3.11)"
# The service runs the venv's python, a symlink to the interpreter the venv is made with, and
# that interpreter's standard library: all of it must be visible inside the unit's sandbox. So
# look where it really is (a pyenv shim, a symlink or a venv's python lead elsewhere): the
# command, its real executable, the base interpreter of a venv, and the base prefix (stdlib).
PY_REAL=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))') \
  || die "$PYTHON does not run"
PY_PLACES=$(readlink -f "$(command -v "$PYTHON")"; echo "$PY_REAL"
            "$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable)); print(os.path.realpath(sys.base_prefix))')
while IFS= read -r place; do
  [ -n "$place" ] || continue
  if why=$(hidden_by_unit "$place"); then
    die "the Python $PYTHON is $place: $why, so the service could not run it. Give one outside /home, /root, /run/user and /tmp: --python /usr/bin/python3 (with: sudo apt-get install -y python3-venv)"
  fi
done <<< "$PY_PLACES"

# 1. the virtualenv; --system-site-packages so Debian's python3-lgpio (gpiozero's pin factory
#    on a Pi) is importable from it
#    It is made with the resolved interpreter, so its bin/python links to a path the service
#    can see even when --python was a symlink in a hidden place; an existing venv whose python
#    is hidden (made by an older installer) is made anew.
VENV_BASE=
if [ -x "$VENV/bin/python" ]; then VENV_BASE=$(readlink -f "$VENV/bin/python"); fi
if [ -n "$VENV_BASE" ] && ! hidden_by_unit "$VENV_BASE" >/dev/null \
   && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "reusing the virtualenv $VENV"
else
  say "creating the virtualenv $VENV with $PY_REAL"
  mkdir -p "$(dirname "$VENV")"
  "$PY_REAL" -m venv --clear --system-site-packages "$VENV" \
    || die "could not create a virtualenv: sudo apt-get install -y python3-venv"
fi

# 2. the package, with the gpio, serial and i2c extras: a wheel built from the checkout, or
#    edge-agent-mcp==VERSION from the package index. The checkout is copied first (without
#    .git, .venv, build/ and *.egg-info) so a stale build/ cannot leak old modules into the
#    wheel and nothing is written into the checkout as root. When staging, these scratch files
#    and pip's temporary build trees are under DESTDIR, and removed at exit.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
pip_() { "$VENV/bin/python" -m pip "$@"; }
WORK=$(mktemp -d "${DESTDIR:-${TMPDIR:-/tmp}}/.edge-agent-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ -n "$DESTDIR" ]; then mkdir -p "$WORK/tmp"; export TMPDIR=$WORK/tmp; fi
# An install under the old distribution name goes first (both would own edge_agent/).
for old in "$VENV"/lib/python3*/site-packages/edge_agent-[0-9]*.dist-info; do
  if [ -d "$old" ]; then
    say "removing the distribution edge-agent from $VENV (now named $DIST)"
    pip_ uninstall --yes --quiet edge-agent
    break
  fi
done
if [ -n "$VERSION" ]; then
  say "installing $DIST $VERSION from the package index into $VENV"
  pip_ install --quiet --upgrade --no-warn-script-location "$DIST[$EXTRAS]==$VERSION" \
    || die "could not install $DIST==$VERSION (pip's message above)"
else
  mkdir -p "$WORK/src" "$WORK/dist"
  # (GNU tar exits 1 when a file changed while it was read, e.g. an editor saving: harmless here)
  { tar -C "$SOURCE" --warning=no-file-changed --exclude=./.git --exclude=./.venv --exclude=./build \
        --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
        --exclude=./.benchmarks --exclude=node_modules -cf - . || [ $? -eq 1 ]; } | tar -C "$WORK/src" -xf -
  say "building a wheel of $SOURCE"
  pip_ wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src" \
    || die "could not build a wheel of $SOURCE (pip's message above)"
  WHEELS=("$WORK"/dist/edge_agent_mcp-*.whl)
  [ "${#WHEELS[@]}" = 1 ] && [ -f "${WHEELS[0]}" ] \
    || die "building $SOURCE gave no edge_agent_mcp wheel: is it an edge-agent checkout?"
  WHEEL=${WHEELS[0]}
  say "installing $(basename "$WHEEL") [$EXTRAS] into $VENV"
  pip_ install --quiet --upgrade --no-warn-script-location "$WHEEL[$EXTRAS]" \
    || die "could not install $(basename "$WHEEL") (pip's message above)"
  # with the same version number already installed pip would say "already satisfied": the
  # checkout's code wins
  pip_ install --quiet --force-reinstall --no-deps --no-warn-script-location "$WHEEL"
fi
INSTALLED=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("'"$DIST"'"))') \
  || die "$DIST is not installed in $VENV"

# 3. documentation next to the venv (the unit's Documentation= points here)
if [ -n "$SOURCE" ]; then
  install -d -m 0755 "$DOCDIR"
  for doc in docs/raspberry-pi.md docs/configuration.md docs/security.md docs/examples/greenhouse.toml; do
    if [ -f "$SOURCE/$doc" ]; then install -m 0644 "$SOURCE/$doc" "$DOCDIR/"; fi
  done
fi

# 4. staged venv: its scripts must name PREFIX, where it will live, not DESTDIR/PREFIX
if [ -n "$DESTDIR" ]; then
  for f in "$VENV"/bin/* "$VENV/pyvenv.cfg"; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -Iq . "$f" 2>/dev/null && grep -qF "$VENV" "$f"; then
      sed -i "s#$VENV#$PREFIX#g" "$f"
    fi
  done
fi

# 5. the unit (ExecStart= and Documentation= follow --prefix), sysusers.d and udev rules
say "installing the unit, sysusers.d and udev files"
install -d -m 0755 "$(dirname "$UNIT")" "$(dirname "$SYSUSERS")" "$(dirname "$UDEV")"
sed "s#/opt/edge-agent#$PREFIX#g" "$UNIT_SRC" > "$UNIT.tmp"
chmod 0644 "$UNIT.tmp"
mv "$UNIT.tmp" "$UNIT"
install -m 0644 "$SYSUSERS_SRC" "$SYSUSERS"
install -m 0644 "$UDEV_SRC" "$UDEV"

# 6. the user and groups (not when staging)
if [ -z "$DESTDIR" ]; then
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$SYSUSERS"
  else  # no systemd-sysusers (very old or non-systemd system): the same with shadow's tools
    for g in gpio i2c dialout; do getent group "$g" >/dev/null || groupadd --system "$g"; done
    id edge-agent >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/edge-agent \
      --no-create-home --shell /usr/sbin/nologin --comment "edge-agent MCP device server" edge-agent
    usermod -a -G gpio,i2c,dialout edge-agent
  fi
  if udev_running; then
    udevadm control --reload || true
    udevadm trigger --subsystem-match=gpio --subsystem-match=i2c-dev || true
  fi
fi

# 7. the config directory and an example config, only if there is none
if [ ! -d "$CONFDIR" ]; then
  install -d -m 0750 "$CONFDIR"
  [ -n "$DESTDIR" ] || chgrp edge-agent "$CONFDIR"
fi
if [ -e "$CONFIG" ]; then
  say "keeping the existing $CONFIG"
  NEW_CONFIG=0
else
  # Secure by default, as Mosquitto 2.0 is: TLS, a user and its password as a systemd
  # credential, and every client read-only unless a rule (or a signed token) says otherwise.
  # `edge-agent check` (and run) name each CHANGE-ME until it is replaced.
  (umask 027; cat > "$CONFIG" <<'EOF'
# edge-agent config written by install.sh. Replace every CHANGE-ME: `edge-agent check` names
# each one until you do, and the service does not start with them. Every key: configuration.md
# in the docs (/opt/edge-agent/share/doc/edge-agent/); drivers for a whole greenhouse:
# greenhouse.toml there. Why TLS, credentials and roles: security.md.
[device]
server_name = "devices/CHANGE-ME/my-pi"   # what cloud clients ask for; needs at least one '/'
# server_id = "my-pi"                     # MQTT client id, unique per device (default: edge-<hostname>-...)
description = "A Raspberry Pi running edge-agent"
simulate = false

[broker]
urls = ["mqtts://CHANGE-ME.example:8883"]   # mqtts:// = TLS (the system CAs, or ca_file below)
# ca_file = "/etc/edge-agent/ca.pem"
username = "CHANGE-ME"
# The password as a systemd credential (sudo systemctl edit edge-agent, then add
# LoadCredential=broker-password:/etc/edge-agent/password); or password_file = "...".
password_credential = "broker-password"

[rbac]
default_role = "viewer"                     # read-only: lists, reads, read-only tools

[[rbac.rules]]                              # the client ids your broker binds to operators
client_id = "CHANGE-ME-*"                   # (edge-agent acl: [[clients]] client_ids)
role = "operator"

# The Pi itself: CPU temperature, load, memory, disk, uptime, network counters.
[[drivers]]
kind = "system"
name = "system"
EOF
  )
  [ -n "$DESTDIR" ] || chgrp edge-agent "$CONFIG"
  say "wrote $CONFIG (TLS, credentials and roles asked for: replace every CHANGE-ME)"
  NEW_CONFIG=1
fi

# 8. systemd
ACTIVE=0
if systemd_running; then
  systemctl daemon-reload
  if systemctl is-active --quiet edge-agent.service; then ACTIVE=1; fi
fi

say "$DIST $INSTALLED installed in $PREFIX${DESTDIR:+ (staged under $DESTDIR)}"
if [ -n "$DESTDIR" ]; then
  exit 0
fi
cat <<EOF

Next steps:
EOF
if [ "$NEW_CONFIG" = 1 ]; then
  cat <<EOF
  sudoedit /etc/edge-agent/agent.toml            # every CHANGE-ME: server_name, broker, user, operators; drivers
EOF
fi
cat <<EOF
  sudo -u edge-agent $PREFIX/bin/edge-agent check --config /etc/edge-agent/agent.toml
  sudo systemctl enable --now edge-agent         # returns once the agent is online on the broker
  journalctl -u edge-agent -f                    # its log; systemctl status edge-agent for its state
EOF
if [ "$ACTIVE" = 1 ]; then
  cat <<EOF

edge-agent is running the previous version: sudo systemctl restart edge-agent
EOF
fi
