#!/usr/bin/env bash
# The README's first command: builds port-agent and the Port emulator, starts the emulator on a
# free loopback port, resyncs examples/quickstart into it twice (the second sends nothing), and
# shows what the agent believes is in Port.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p port-agent -p port-emulator
bin=$PWD/target/release
work=$(mktemp -d)
trap 'kill "${emulator_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r examples/quickstart/. "$work/"

"$bin/port-emulator" --listen 127.0.0.1:0 >"$work/emulator.out" 2>"$work/emulator.err" &
emulator_pid=$!
for _ in $(seq 50); do
  grep -q 'listening on' "$work/emulator.out" 2>/dev/null && break
  sleep 0.1
done
base_url=$(sed -n 's/^port-emulator listening on //p' "$work/emulator.out")
[ -n "$base_url" ] || { echo "the emulator did not start:" >&2; cat "$work/emulator.err" >&2; exit 1; }

cat >"$work/agent.yaml" <<YAML
port: {base_url: $base_url, client_id: emulator-client, client_secret: emulator-secret}
integration:
  identifier: my-services
  type: json
  config: {kinds: {team: ./data/teams.jsonl, service: ./data/services.jsonl}}
mapping: ./port-app-config.yaml
resources_path: ./.port/resources
state: {path: ./state.redb}
event_listener: {type: ONCE}
YAML
cd "$work"
writes() { curl -fsS "$base_url/_emulator/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["entities_upserted"])' 2>/dev/null || echo "?"; }

echo "== port-agent port check"
"$bin/port-agent" port check --config agent.yaml
echo; echo "== first resync: everything is new"
"$bin/port-agent" resync --config agent.yaml
echo "   entity writes Port received so far: $(writes)"
echo; echo "== second resync: nothing changed, so nothing is sent"
"$bin/port-agent" resync --config agent.yaml
echo "   entity writes Port received so far: $(writes)"
echo; echo "== port-agent state inspect (state file: $work/state.redb)"
"$bin/port-agent" state inspect --config agent.yaml
