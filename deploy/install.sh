#!/usr/bin/env bash
# deploy/install.sh: install or upgrade inspector on a line PC (Debian 12 or similar). Run as root.
#
#   sudo deploy/install.sh PACKAGE
#
# PACKAGE is an inspector wheel (inspector-0.1.0-py3-none-any.whl), an sdist, or a source checkout.
# Safe to run again: it upgrades the package and the unit files and leaves the configuration, the
# models and the journal alone. It does not start or restart anything.
#
# What it does:
#   - groups video and render (created when missing: the units name them in SupplementaryGroups=, and
#     systemd refuses to start a unit whose group does not exist), and the system user `inspector`
#     (no login, home /var/lib/inspector, member of video and render)
#   - /opt/inspector/venv with PACKAGE installed (root-owned: the daemon cannot change its own code)
#   - /etc/systemd/system/inspector.service and inspector@.service (overwritten: customise with drop-ins,
#     `systemctl edit inspector`)
#   - /etc/inspector (root:inspector 0750) with inspector.yaml from deploy/inspector.example.yaml, unless
#     one exists
#   - /var/lib/inspector (inspector, 0750) with models/ (root:inspector: the daemon reads, cannot replace)
#   - /srv/inspector/incoming, the example config's watched folder (inspector, setgid 2770: add the
#     acquisition program's user to group inspector); the units let the daemon write under /srv/inspector
#   - /etc/udev/rules.d/60-inspector-cpu-latency.rules, applied at once: group inspector may write
#     /dev/cpu_dma_latency, where the daemon holds its CPU wake-up latency request when pipeline.cpu_latency_us is set
#
# Environment:
#   PYTHON    interpreter for the venv (default: python3.11, else python3; must be >= 3.11)
#   PIP_ARGS  extra pip arguments, e.g. an offline PC: PIP_ARGS="--no-index --find-links /media/usb/wheels"
set -euo pipefail

VENV=/opt/inspector/venv       # the path the unit files run; change both together
CONF_DIR=/etc/inspector
STATE_DIR=/var/lib/inspector
WATCH_DIR=/srv/inspector       # ReadWritePaths= in the units
UNIT_DIR=/etc/systemd/system
USER_NAME=inspector

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

case ${1:-} in
    -h | --help) usage; exit 0 ;;
    "") usage >&2; exit 2 ;;
esac
[[ $# -eq 1 ]] || die "one PACKAGE argument expected, got $#"
[[ $(id -u) -eq 0 ]] || die "run as root (sudo $0 $*)"
[[ -e $1 ]] || die "no such wheel, sdist or folder: $1"
package=$(realpath "$1")
if [[ -d $package && ! -f $package/pyproject.toml ]]; then
    die "$package is a folder without pyproject.toml: not an inspector source checkout"
fi
UDEV_RULE=$here/udev/60-inspector-cpu-latency.rules
for f in "$repo/systemd/inspector.service" "$repo/systemd/inspector@.service" "$here/inspector.example.yaml" "$UDEV_RULE"; do
    [[ -f $f ]] || die "missing $f: run this script from an inspector checkout"
done

python=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
[[ -n $python ]] || die "no python3 found (apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$python is $("$python" -V 2>&1); inspector needs Python >= 3.11 (set PYTHON=...)"
# The venv links to its base interpreter, and the service runs with ProtectHome=yes: an interpreter
# under /home or /root (pyenv, conda, a user's build) would be invisible to the daemon.
base=$("$python" -c 'import sys; print(sys.base_prefix)')
case $base/ in
    /home/* | /root/* | /run/user/*) die "$python lives in $base, which the service cannot see (ProtectHome=yes); use the system python3 (PYTHON=/usr/bin/python3.11)" ;;
esac
read -r -a pip_args <<<"${PIP_ARGS:-}"

# --- user and groups ---------------------------------------------------------------------------
for group in video render; do
    if ! getent group "$group" >/dev/null; then
        say "creating system group $group"
        groupadd --system "$group"
    fi
done
if ! getent passwd "$USER_NAME" >/dev/null; then
    say "creating system user $USER_NAME"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "inspector daemon" "$USER_NAME"
fi
usermod --append --groups video,render "$USER_NAME"

# --- the package -------------------------------------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV with $python"
    install -d -m 0755 "$(dirname "$VENV")"
    "$python" -m venv "$VENV" || die "could not create the venv (apt-get install python3-venv)"
fi
say "installing $package into $VENV"
"$VENV/bin/python" -m pip install --quiet "${pip_args[@]}" "$package"
# pip skips a package whose version is already installed; reinstall this build itself (not its
# dependencies) so that a rebuilt wheel or an edited checkout of the same version takes effect.
"$VENV/bin/python" -m pip install --quiet "${pip_args[@]}" --no-deps --force-reinstall "$package"
"$VENV/bin/inspector" --version >/dev/null || die "$VENV/bin/inspector does not run"
chown -R root:root "$VENV"

# --- configuration, state, units ----------------------------------------------------------------
install -d -m 0750 -o root -g "$USER_NAME" "$CONF_DIR"
if [[ ! -e $CONF_DIR/inspector.yaml ]]; then
    say "creating $CONF_DIR/inspector.yaml from deploy/inspector.example.yaml"
    install -m 0640 -o root -g "$USER_NAME" "$here/inspector.example.yaml" "$CONF_DIR/inspector.yaml"
else
    say "keeping $CONF_DIR/inspector.yaml"
fi
for secret in "$CONF_DIR"/mqtt-password "$CONF_DIR"/*.mqtt-password; do
    # systemd (root) reads these and hands the daemon a copy: nobody else needs them.
    if [[ -f $secret ]]; then
        chown root:root "$secret"
        chmod 0600 "$secret"
    fi
done

install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE_DIR"
install -d -m 0750 -o root -g "$USER_NAME" "$STATE_DIR/models"
install -d -m 0755 /srv
install -d -m 0750 -o root -g "$USER_NAME" "$WATCH_DIR"
install -d -m 2770 -o "$USER_NAME" -g "$USER_NAME" "$WATCH_DIR/incoming"

say "installing the udev rule for /dev/cpu_dma_latency"
install -d -m 0755 /etc/udev/rules.d
install -m 0644 "$UDEV_RULE" /etc/udev/rules.d/
if [[ -e /dev/cpu_dma_latency ]]; then
    if command -v udevadm >/dev/null && [[ -S /run/udev/control ]]; then
        udevadm control --reload
        udevadm trigger --action=change --sysname-match=cpu_dma_latency --settle || true
    fi
    # Without a running udev (a container, a chroot) the rule waits for the next boot: set it now too.
    chgrp "$USER_NAME" /dev/cpu_dma_latency && chmod 0620 /dev/cpu_dma_latency ||
        say "could not give group $USER_NAME /dev/cpu_dma_latency: the daemon will warn cpu_latency_not_held"
fi

say "installing the units into $UNIT_DIR"
install -m 0644 "$repo/systemd/inspector.service" "$repo/systemd/inspector@.service" "$UNIT_DIR/"
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi

version=$("$VENV/bin/inspector" --version 2>&1 || true)
cat <<EOF

inspector installed: $version
Next steps:
  1. Put the model in place (root-owned, readable by the daemon):
       install -m 0640 -g $USER_NAME model.onnx $STATE_DIR/models/current.onnx
  2. Edit $CONF_DIR/inspector.yaml: model.path (and sha256), station.line / station.name, source
     (the example watches $WATCH_DIR/incoming; a folder outside $WATCH_DIR needs ReadWritePaths= in a
     drop-in: systemctl edit inspector), mqtt.host / mqtt.username. Then check it as the daemon will, as its
     user (as root every folder looks writable):
       runuser -u $USER_NAME -- $VENV/bin/inspector config check --run $CONF_DIR/inspector.yaml
  3. The broker password, if the broker needs one (read by systemd, never by the daemon user directly):
       install -m 0600 -o root -g root /dev/null $CONF_DIR/mqtt-password
       systemd-ask-password -n "MQTT password:" > $CONF_DIR/mqtt-password
     or encrypted at rest with systemd-creds (TPM2 or the host key), then a drop-in that loads it:
       systemd-ask-password -n | systemd-creds encrypt --name=mqtt-password - $CONF_DIR/mqtt-password.cred
       systemctl edit inspector   ->   [Service] / LoadCredential= / LoadCredentialEncrypted=mqtt-password:$CONF_DIR/mqtt-password.cred
  4. Start it and follow the log:
       systemctl enable --now inspector
       journalctl -u inspector -f
     Several stations on this PC: inspector@<station>.service with $CONF_DIR/<station>.yaml (systemd/README.md);
     each needs its own watched folder, which this script does not create:
       install -d -m 0750 -o $USER_NAME -g $USER_NAME $WATCH_DIR/<station>
       install -d -m 2770 -o $USER_NAME -g $USER_NAME $WATCH_DIR/<station>/incoming
  An upgrade does not restart running daemons: systemctl restart inspector (between shifts).
  A broker on this PC: deploy/mosquitto/ (mosquitto.conf, inspector.acl).
EOF
