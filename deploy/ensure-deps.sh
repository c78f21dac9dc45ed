#!/usr/bin/env bash
# Make sure the system programs mqtt-guard needs are present, installing them with apt-get when it can
# (root, or passwordless sudo); otherwise it says exactly what to install.
#   (no option)    redis-server (always needed; exit 1 without it)
#   --run          also mosquitto-clients: `make run` prints mosquitto_sub/mosquitto_pub commands
#                  (never fails for them)
#   --check/--all  also mosquitto and mosquitto-clients, for the compatibility tests, and systemd, whose
#                  systemd-analyze checks the units in deploy/systemd/ (never fails for them)
#   --venv PYTHON  only the venv module of PYTHON (Debian ships it apart: python3-venv); exit 1 without it
set -euo pipefail
mode=${1:-}
need=()
required=()  # of need, what we cannot run without
if [[ "$mode" == "--venv" ]]; then
  python=${2:-python3}
  if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "$python cannot build the virtual environment (no venv/ensurepip module; Debian ships it apart)" >&2
    ver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    pkg=python3-venv
    # PYTHON=python3.X (not the distribution's default python3) needs its own python3.X-venv
    if [[ "${python##*/}" != python3 ]] && command -v apt-cache >/dev/null \
      && apt-cache show "python${ver}-venv" >/dev/null 2>&1; then
      pkg="python${ver}-venv"
    fi
    need+=("$pkg")
    required+=("$pkg")
  fi
else
  command -v redis-server >/dev/null || { need+=(redis-server); required+=(redis-server); }
  if [[ "$mode" == "--check" || "$mode" == "--all" ]]; then
    command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
    command -v systemd-analyze >/dev/null || need+=(systemd)
  fi
  if [[ "$mode" == "--check" || "$mode" == "--all" || "$mode" == "--run" ]]; then
    command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
  fi
fi
[[ ${#need[@]} -eq 0 ]] && exit 0
give_up() {
  echo "missing: ${need[*]}; $1" >&2
  [[ ${#required[@]} -eq 0 ]] || exit 1
  exit 0
}
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; else
    give_up "install them with: sudo apt-get install -y ${need[*]}"
  fi
fi
command -v apt-get >/dev/null || give_up "install them with your package manager"
echo "installing ${need[*]} with apt-get" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
