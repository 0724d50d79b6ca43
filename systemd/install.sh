#!/usr/bin/env bash
# Install swapd as a systemd service from this checkout (run as root on the station PC).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
# Operators (`swapd ctl`) join swapd-ops, never the service's own group swapd (which reads secrets).
getent group swapd-ops >/dev/null || groupadd --system swapd-ops
id swapd >/dev/null 2>&1 || useradd --system --home-dir /var/lib/swapd --shell /usr/sbin/nologin --groups dialout swapd
mkdir -p /opt/swapd /etc/swapd/tls
cp -r "$src"/. /opt/swapd/
python3 -m venv /opt/swapd/.venv
# [solver]: highspy for grid.policy predictive's solver process (the daemon never imports it)
/opt/swapd/.venv/bin/pip install --quiet '/opt/swapd[solver]'
[ -f /etc/swapd/station.yaml ] || { cp -r "$src/config/." /etc/swapd/; sed -i -e 's#state_dir: var/state#state_dir: /var/lib/swapd#' -e 's#ctl_socket: var/ctl.sock.*#ctl_socket: /run/swapd/ctl.sock\n  ctl_group: swapd-ops#' /etc/swapd/station.yaml; }
# Secrets: root and the service user only.
chown -R root:swapd /etc/swapd/tls && chmod 0750 /etc/swapd/tls
[ -f /etc/swapd/swapd.env ] || install -m 0640 -g swapd "$src/systemd/swapd.env.example" /etc/swapd/swapd.env
install -m 0644 "$src/systemd/swapd.service" /etc/systemd/system/swapd.service
/opt/swapd/.venv/bin/swapd check-config /etc/swapd/station.yaml
systemctl daemon-reload
systemctl enable --now swapd
systemctl --no-pager status swapd
