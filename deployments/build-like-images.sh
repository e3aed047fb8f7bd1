#!/usr/bin/env bash
# Builds the service binaries the way the images' build stage does, without Docker: from a copy
# of shared/ and services/<name>/ only (what Dockerfile.dockerignore lets in, without tests and
# test data), in module mode (GOWORK=off), static (CGO_ENABLED=0). It catches what breaks an
# image build but not a workspace build: a service go.mod or go.sum that lacks a requirement of
# the shared module (run `GOWORK=off go mod tidy` in the service), or code that needs a file the
# image does not get.
#
#   deployments/build-like-images.sh [-o dir] [service...]
#
# Services default to extractor transformer loader mirror. With -o the binaries are kept in dir;
# otherwise they go to a scratch folder that is removed. Exits non-zero naming the first service
# that does not build.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=""
if [[ ${1:-} == -o ]]; then
	out=$(mkdir -p "$2" && cd "$2" && pwd)
	shift 2
fi
services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=(extractor transformer loader mirror)

scratch=$(mktemp -d "${TMPDIR:-/tmp}/build-like-images.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
[[ -n $out ]] || out=$scratch/bin

for svc in "${services[@]}"; do
	[[ -f $root/services/$svc/go.mod ]] || { echo "build-like-images: no services/$svc" >&2; exit 1; }
	src=$scratch/$svc
	mkdir -p "$src/services"
	cp -R "$root/shared" "$src/shared"
	cp -R "$root/services/$svc" "$src/services/$svc"
	find "$src" -type d -name testdata -prune -exec rm -rf {} +
	find "$src" -type f -name '*_test.go' -delete
	if ! (cd "$src/services/$svc" && GOWORK=off CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath \
		go build -ldflags="-s -w" -o "$out/$svc" .); then
		echo "build-like-images: services/$svc does not build as its image would" >&2
		exit 1
	fi
	echo "build-like-images: $svc ok ($(du -h "$out/$svc" | cut -f1))"
done
