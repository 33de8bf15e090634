#!/usr/bin/env bash
# `port-agent new demo` in a copy of this workspace: the integration it makes must build, pass
# clippy and its own test, as generated. Shares this workspace's target/ (only the copied
# workspace crates build again).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$scratch" -xf -
export CARGO_TARGET_DIR="$root/target"
cargo build --locked -q -p port-agent
"$root/target/debug/port-agent" new demo --workspace "$scratch"
cd "$scratch"
cargo fmt --all -- --check
cargo clippy --locked -q -p port-agent-integrations --all-targets -- -D warnings
cargo test --locked -q -p port-agent-integrations --test demo
"$root/target/debug/port-agent" integrations list >/dev/null
echo "port-agent new demo: builds, lints clean, its test passes"
