#!/usr/bin/env bash
# The Helm chart (packaging/helm/port-agent) rendered as `helm template` renders it, for each
# case in packaging/helm/tests/values/, and compared with packaging/helm/tests/rendered/ — the
# manifests agent/tests/helm_chart.rs checks and runs. A case whose values must be refused has
# its expected error in rendered/<case>.error.
#
# Helm is in no registry CI reaches; packaging/helm/render is Helm's engine rebuilt on the
# libraries Helm 3 uses (text/template, sprig v3, ghodss/yaml, gojsonschema), from Debian.
#
#   scripts/check-helm.sh           check
#   scripts/check-helm.sh --bless   write the rendered files anew (then review the diff)
set -euo pipefail
cd "$(dirname "$0")/.."
bless=${1:-}

packages=(golang-go golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev
  golang-github-xeipuuv-gojsonschema-dev)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# Debian's Go libraries are a GOPATH; sprig and semver are imported by their /v3 paths there.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
gopath=$scratch/gopath
mkdir -p "$gopath/src/github.com/Masterminds" "$gopath/src/port-agent/render"
for dir in /usr/share/gocode/src/*; do
  [ "$(basename "$dir")" = github.com ] || ln -s "$dir" "$gopath/src/"
done
for dir in /usr/share/gocode/src/github.com/*; do
  [ "$(basename "$dir")" = Masterminds ] || ln -s "$dir" "$gopath/src/github.com/"
done
ln -s /usr/share/gocode/src/github.com/Masterminds/goutils "$gopath/src/github.com/Masterminds/"
for module in semver sprig; do
  mkdir -p "$gopath/src/github.com/Masterminds/$module"
  ln -s "/usr/share/gocode/src/github.com/Masterminds/$module" "$gopath/src/github.com/Masterminds/$module/v3"
done
cp packaging/helm/render/main.go "$gopath/src/port-agent/render/"
(cd "$gopath/src/port-agent/render" \
  && GO111MODULE=off GOPATH=$gopath GOFLAGS= GOCACHE=${GOCACHE:-$scratch/cache} go build -o "$scratch/render" .)

chart=packaging/helm/port-agent
tests=packaging/helm/tests
failed=0
for values in "$tests"/values/*.yaml; do
  case=$(basename "$values" .yaml)
  if "$scratch/render" "$chart" -f "$values" --name port-agent --namespace port \
      --api-versions monitoring.coreos.com/v1 >"$scratch/$case.yaml" 2>"$scratch/$case.error"; then
    "$scratch/render" "$chart" -f "$values" --name port-agent --namespace port --notes >/dev/null
    got=$scratch/$case.yaml expected=$tests/rendered/$case.yaml
  else
    got=$scratch/$case.error expected=$tests/rendered/$case.error
  fi
  if [ "$bless" = --bless ]; then
    rm -f "$tests/rendered/$case".*
    cp "$got" "$expected"
  elif ! diff -u "$expected" "$got"; then
    echo "helm chart: case $case renders differently from $expected (scripts/check-helm.sh --bless to accept)" >&2
    failed=1
  fi
done
[ "$failed" = 0 ]
echo "helm chart: $(ls "$tests"/values/*.yaml | wc -l) cases render as recorded"
