#!/usr/bin/env bash
# Install, upgrade, roll back or remove swapd as a systemd service (run as root on the station).
#
#   systemd/install.sh [--root DIR] [--wheelhouse DIR] [--user NAME] [--python PY]   (PY: 3.11+)
#   systemd/install.sh rollback [--root DIR]
#   systemd/install.sh uninstall [--root DIR]
#
# Every release gets its own venv, /opt/swapd/releases/<version>-<commit>, installed from the
# locked, hash-checked requirements (requirements/daemon.txt) and the wheel built from this
# checkout, or offline from a wheelhouse (`make wheelhouse`, systemd/wheelhouse.sh: pip runs with
# --no-index and installs only the hash-checked wheels found there). /opt/swapd/current points at the
# running release, /opt/swapd/previous at the one before (kept for `rollback`). An upgrade
# stops the service and copies the state files to /var/lib/swapd/backup/<old release>/ first.
# The config in /etc/swapd is written once and never overwritten. `uninstall` removes the unit
# and /opt/swapd and keeps /etc/swapd and the state in /var/lib/swapd.
#
# --root DIR writes everything under DIR (a scratch install for tests: no user is created and
# systemctl is not called).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
action=install root="" wheelhouse="" user=swapd python=/usr/bin/python3
case "${1:-}" in install|rollback|uninstall) action=$1; shift ;; esac
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$(realpath -m "$2"); shift 2 ;;
    --wheelhouse) wheelhouse=$(realpath "$2"); shift 2 ;;
    --user) user=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
opt=$root/opt/swapd etc=$root/etc/swapd state=$root/var/lib/swapd unit=$root/etc/systemd/system/swapd.service
live() { [ -z "$root" ] && command -v systemctl >/dev/null 2>&1; }

case "$action" in
uninstall)
  if live; then systemctl disable --now swapd || true; fi
  rm -f "$unit"
  rm -rf "$opt"
  if live; then systemctl daemon-reload; fi
  echo "swapd removed; kept $etc (config) and $state (journal, outbox)"
  exit 0 ;;
rollback)
  [ -L "$opt/previous" ] || { echo "install.sh: no previous release to roll back to" >&2; exit 1; }
  cur=$(readlink "$opt/current") prev=$(readlink "$opt/previous")
  if live; then systemctl stop swapd; fi
  ln -sfn "$prev" "$opt/current" && ln -sfn "$cur" "$opt/previous"
  echo "current: $prev (previous: $cur). State written by a newer release may need the backup in $state/backup/$(basename "$prev")"
  if live; then systemctl start swapd; fi
  exit 0 ;;
esac

if [ -z "$root" ]; then
  # Operators (`swapd ctl`) join swapd-ops, never the service's own group (which reads secrets).
  getent group swapd-ops >/dev/null || groupadd --system swapd-ops
  getent group "$user" >/dev/null || groupadd --system "$user"
  id "$user" >/dev/null 2>&1 || useradd --system --gid "$user" --home-dir /var/lib/swapd \
    --shell /usr/sbin/nologin --groups dialout "$user"
fi
group=$(id -gn "$user")

# The wheel: from the wheelhouse, or built from this checkout (records its commit).
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
if [ -n "$wheelhouse" ]; then
  wheel=$(ls "$wheelhouse"/swapd-*.whl | tail -n 1)
  lock=$wheelhouse/daemon.txt
else
  "$python" -m pip wheel --quiet --no-deps -w "$build" "$src"
  wheel=$(ls "$build"/swapd-*.whl)
  lock=$src/requirements/daemon.txt
fi
commit=$("$python" -c 'import json,sys,zipfile; print(json.loads(zipfile.ZipFile(sys.argv[1]).read("edge/_build_info.json"))["commit"])' "$wheel")
name=$(basename "$wheel" | cut -d- -f2)-$commit
release=$opt/releases/$name

mkdir -p "$opt/releases" "$etc/tls" "$(dirname "$unit")"
running=$(readlink "$opt/current" 2>/dev/null || true)
# Reinstalling the running release rebuilds its venv in place: stop the service first.
if [ "$running" = "$release" ] && live; then systemctl stop swapd 2>/dev/null || true; fi
rm -rf "$release"
"$python" -m venv "$release"
if [ -n "$wheelhouse" ]; then
  "$release/bin/pip" install --quiet --no-index --find-links "$wheelhouse" --require-hashes -r "$lock"
  "$release/bin/pip" install --quiet --no-index --no-deps "$wheel"
else
  "$release/bin/pip" install --quiet --require-hashes -r "$lock"
  "$release/bin/pip" install --quiet --no-deps "$wheel"
fi
install -D -m 0644 "$src/README.md" "$release/share/swapd/README.md"

# The config, once: state and the ctl socket where the unit's StateDirectory/RuntimeDirectory are.
if [ ! -f "$etc/station.yaml" ]; then
  sed -e 's#^\(  state_dir:\) [^ ]*#\1 /var/lib/swapd#' \
      -e 's#^\(  ctl_socket:\) [^ ]*#\1 /run/swapd/ctl.sock#' \
      "$src/config/station.yaml" > "$etc/station.yaml"
  chmod 0644 "$etc/station.yaml"
  if [ -z "$root" ]; then sed -i 's#^\(  ctl_socket: .*\)$#\1\n  ctl_group: swapd-ops#' "$etc/station.yaml"; fi
fi
# Secrets: root and the service user only.
chown -R "root:$group" "$etc/tls" && chmod 0750 "$etc/tls"
[ -f "$etc/swapd.env" ] || install -m 0640 -g "$group" "$src/systemd/swapd.env.example" "$etc/swapd.env"
# The new release must accept the station's config (an old config `version` is refused with what
# changed) before anything the running release uses is touched.
if ! "$release/bin/swapd" check-config "$etc/station.yaml" >/dev/null; then
  [ "$running" = "$release" ] || rm -rf "$release"
  echo "install.sh: $name refuses $etc/station.yaml (above); the running release is unchanged" >&2
  exit 2
fi
install -m 0644 "$src/systemd/swapd.service" "$unit"

# Switch: stop, back up the state, keep the old release as previous, point current at the new.
if live; then systemctl stop swapd 2>/dev/null || true; fi
if [ -L "$opt/current" ] && [ "$(readlink "$opt/current")" != "$release" ]; then
  old=$(readlink "$opt/current")
  if ls "$state"/*.sqlite >/dev/null 2>&1; then
    mkdir -p "$state/backup/$(basename "$old")"
    cp -p "$state"/*.sqlite* "$state/backup/$(basename "$old")/"
  fi
  ln -sfn "$old" "$opt/previous"
  # Only the current and the previous release are kept.
  for r in "$opt"/releases/*; do
    [ "$r" = "$release" ] || [ "$r" = "$old" ] || rm -rf "$r"
  done
fi
ln -sfn "$release" "$opt/current"
echo "installed $name in $release"
if live; then
  systemctl daemon-reload
  systemctl enable --now swapd
  systemctl --no-pager status swapd || true
fi
