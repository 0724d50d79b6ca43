#!/usr/bin/env bash
# Install swapd as a systemd service from this checkout (run as root on the station PC).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
id swapd >/dev/null 2>&1 || useradd --system --home-dir /var/lib/swapd --shell /usr/sbin/nologin --groups dialout swapd
mkdir -p /opt/swapd /etc/swapd/tls
cp -r "$src"/. /opt/swapd/
python3 -m venv /opt/swapd/.venv
# [solver]: highspy for grid.policy predictive's solver process (the daemon never imports it)
/opt/swapd/.venv/bin/pip install --quiet '/opt/swapd[solver]'
[ -f /etc/swapd/station.yaml ] || { cp -r "$src/config/." /etc/swapd/; sed -i 's#state_dir: var/state#state_dir: /var/lib/swapd#' /etc/swapd/station.yaml; }
[ -f /etc/swapd/swapd.env ] || install -m 0640 -g swapd "$src/systemd/swapd.env.example" /etc/swapd/swapd.env
install -m 0644 "$src/systemd/swapd.service" /etc/systemd/system/swapd.service
/opt/swapd/.venv/bin/swapd check-config /etc/swapd/station.yaml
systemctl daemon-reload
systemctl enable --now swapd
systemctl --no-pager status swapd
