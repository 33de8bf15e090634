#!/usr/bin/env bash
# The README's first command: builds port-agent and the Port emulator, starts the emulator on a
# free loopback port, and runs the agent against it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p port-agent -p port-emulator
bin=target/release
work=$(mktemp -d)
trap 'kill "${emulator_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

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
integration: {identifier: my-services, type: json}
state: {path: $work/state.redb}
event_listener: {type: ONCE}
YAML

echo "== port-agent port check (against the emulator at $base_url)"
"$bin/port-agent" port check --config "$work/agent.yaml"
echo "== port-agent mapping test (a sample mapping on two raw items)"
cat >"$work/port-app-config.yaml" <<'YAML'
resources:
  - kind: service
    selector: {query: 'true'}
    port:
      entity:
        mappings:
          identifier: .name | ascii_downcase
          title: .name
          blueprint: '"service"'
          properties:
            language: .language // 'unknown'
            repo: .url | sub("^https://"; "")
YAML
printf '%s\n' '{"name": "Payments", "language": "Rust", "url": "https://git.example.com/payments"}' \
               '{"name": "Search", "url": "https://git.example.com/search"}' >"$work/services.jsonl"
"$bin/port-agent" mapping test --mapping "$work/port-app-config.yaml" --kind service --input "$work/services.jsonl"
echo "== the emulator saw:"
curl -fsS "$base_url/_emulator/stats" 2>/dev/null || true
echo
