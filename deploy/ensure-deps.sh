#!/usr/bin/env bash
# Make sure the system programs mqtt-guard needs are present: redis-server (always), and
# mosquitto + mosquitto-clients (for the compatibility tests). Installs them with apt-get when it can;
# otherwise says exactly what to install.  --check: install if possible, never fail for mosquitto.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
if [[ "${1:-}" == "--check" || "${1:-}" == "--all" ]]; then
  command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
  command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
fi
[[ ${#need[@]} -eq 0 ]] && exit 0
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; else
    echo "missing: ${need[*]}. Install them with: sudo apt-get install -y ${need[*]}" >&2
    command -v redis-server >/dev/null || exit 1
    exit 0
  fi
fi
if command -v apt-get >/dev/null; then
  echo "installing ${need[*]} with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "missing: ${need[*]}; install them with your package manager" >&2
  command -v redis-server >/dev/null || exit 1
fi
