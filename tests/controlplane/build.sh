#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager, kubectl, etcd) from
# their Go modules with the machine's Go toolchain. Binaries are cached per go.sum, so only
# the first run on a machine compiles (the Go module and build caches help the next one).
# Prints the bin directory as its last line.
set -euo pipefail
cd "$(dirname "$0")"
key=$(cat go.mod go.sum cmd/*/main.go | sha256sum | cut -c1-16)
bin="${CADML_CONTROLPLANE_CACHE:-$HOME/.cache/cadml-controlplane}/$key"
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] && [ -x "$bin/kubectl" ] \
   && [ -x "$bin/kube-controller-manager" ]; then
  echo "control plane binaries cached in $bin" >&2
  echo "$bin"
  exit 0
fi
mkdir -p "$bin.tmp"
start=$(date +%s)
for cmd in etcd kube-apiserver kube-controller-manager kubectl; do
  echo "building $cmd …" >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin.tmp/$cmd" "./cmd/$cmd"
done
rm -rf "$bin" && mv "$bin.tmp" "$bin"
echo "built the control plane in $(( $(date +%s) - start )) s into $bin" >&2
echo "$bin"
