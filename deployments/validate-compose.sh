#!/usr/bin/env bash
# Validates the compose stack without a Docker engine:
#   - docker-compose.yml alone, with the offline profile, and with docker-compose.offline.yml,
#     through `docker-compose config` (Debian's docker-compose package, installed with apt-get
#     when it is missing and the script runs as root) or the `docker compose` plugin;
#   - the same three ways through Docker Compose v2's loader (deployments/composecheck), when
#     Go is available;
#   - the files the stack mounts or builds from exist;
#   - the four service Dockerfiles keep the same shape (static build, distroless nonroot,
#     STOPSIGNAL, HEALTHCHECK through the binary's --healthcheck);
#   - deployments/nats/nats.conf with `nats-server -t` and the mongo init script with
#     `node --check`, when those programs are available.
# It exits non-zero on the first problem and says which. Set NO_INSTALL=1 to forbid apt-get.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
services=(extractor transformer loader mirror)
fail() { echo "validate-compose: $*" >&2; exit 1; }
say() { echo "validate-compose: $*"; }

# --- a compose validator -------------------------------------------------------------------
compose=()
if command -v docker-compose >/dev/null 2>&1; then
	compose=(docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
elif [[ $(id -u) -eq 0 && "${NO_INSTALL:-0}" != 1 ]] && command -v apt-get >/dev/null 2>&1; then
	say "installing Debian's docker-compose with apt-get"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq docker-compose >/dev/null
	compose=(docker-compose)
else
	fail "no docker-compose or docker compose found; install Debian's docker-compose package"
fi
say "using $("${compose[@]}" version 2>/dev/null | head -n 1)"

# --- the files the stack refers to -------------------------------------------------------------
for f in docker-compose.yml docker-compose.offline.yml deployments/nats/nats.conf \
	deployments/mongo/init/10-app-user.js; do
	[[ -f $f ]] || fail "$f is missing"
done
for s in "${services[@]}"; do
	[[ -f deployments/$s/Dockerfile ]] || fail "deployments/$s/Dockerfile is missing"
	[[ -f deployments/$s/Dockerfile.dockerignore ]] ||
		fail "deployments/$s/Dockerfile.dockerignore is missing"
done

# --- compose config ----------------------------------------------------------------------------
# The stack reads .env (env_file). A clone has none, so the files are checked in a scratch folder
# with .env.example as .env; the repository is never written to. An existing .env is checked
# as it is, since it is what `docker compose up` would use.
work=$root
if [[ ! -f .env ]]; then
	[[ -f .env.example ]] || fail ".env.example is missing"
	scratch=$(mktemp -d "${TMPDIR:-/tmp}/validate-compose.XXXXXX")
	trap 'rm -rf "$scratch"' EXIT
	cp docker-compose.yml docker-compose.offline.yml "$scratch/"
	cp .env.example "$scratch/.env"
	ln -s "$root/deployments" "$scratch/deployments"
	work=$scratch
fi

config() { # config <label> <compose arguments...>: prints the merged file
	local label=$1
	shift
	local out
	if ! out=$(cd "$work" && env -u COMPOSE_FILE -u COMPOSE_PROFILES "${compose[@]}" "$@" \
		config 2>&1); then
		echo "$out" >&2
		fail "$label: compose config failed"
	fi
	printf '%s\n' "$out"
}

base=$(config "docker-compose.yml" -f docker-compose.yml)
for s in nats mongo "${services[@]}"; do
	grep -q "^  $s:$" <<<"$base" || fail "docker-compose.yml: no service $s"
done
grep -q "replicas: 3" <<<"$base" || fail "docker-compose.yml: the loader is not replicated"
grep -q "condition: service_healthy" <<<"$base" ||
	fail "docker-compose.yml: no service waits for a healthy dependency"
say "docker-compose.yml: ok"

config "offline profile" -f docker-compose.yml --profile offline >/dev/null
say "docker-compose.yml --profile offline: ok"

offline=$(config "offline override" -f docker-compose.yml -f docker-compose.offline.yml \
	--profile offline)
grep -q "TAXII_API_URL: http://mirror:8000/" <<<"$offline" ||
	fail "docker-compose.offline.yml: the extractor does not read the mirror"
say "docker-compose.yml + docker-compose.offline.yml --profile offline: ok"

# The same files through Docker Compose v2's own loader (compose-go), which also catches what v1
# lets through: a dependency on a service no active profile enables, host port clashes.
if command -v go >/dev/null 2>&1; then
	bin=$(mktemp -d "${TMPDIR:-/tmp}/composecheck.XXXXXX")
	if ! (cd deployments/composecheck && GOWORK=off GOFLAGS=-mod=readonly \
		go build -o "$bin/composecheck" .); then
		rm -rf "$bin"
		fail "could not build deployments/composecheck"
	fi
	v2() { # v2 <label> <composecheck arguments...>
		local label=$1
		shift
		if ! (cd "$work" && env -u COMPOSE_FILE -u COMPOSE_PROFILES "$bin/composecheck" "$@" \
			>/dev/null); then
			rm -rf "$bin"
			fail "$label: compose v2 loader failed"
		fi
	}
	v2 "docker-compose.yml" -f docker-compose.yml
	v2 "offline profile" -f docker-compose.yml -profile offline
	v2 "offline override" -f docker-compose.yml -f docker-compose.offline.yml -profile offline
	rm -rf "$bin"
	say "compose v2 loader (compose-go): ok"
else
	say "compose v2 loader: not checked, no go"
fi

# --- Dockerfiles ------------------------------------------------------------------------------
# Lines every service Dockerfile must hold, with SERVICE standing for the service name.
required=(
	'ARG GO_VERSION=1.26'
	'FROM golang:${GO_VERSION} AS build'
	'ENV CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS=-trimpath'
	'WORKDIR /src/services/SERVICE'
	'FROM gcr.io/distroless/static-debian12:nonroot'
	'COPY --from=build /out/SERVICE /app/SERVICE'
	'USER nonroot:nonroot'
	'STOPSIGNAL SIGTERM'
	'    CMD ["/app/SERVICE", "--healthcheck"]'
	'ENTRYPOINT ["/app/SERVICE"]'
)
normal() { # the Dockerfile of a service without the lines allowed to differ
	sed -e "s/$1/SERVICE/g" "deployments/$1/Dockerfile" |
		grep -v -E '^# Image of the attack-etl|^ENV METRICS_ADDR=|^EXPOSE '
}
for s in "${services[@]}"; do
	df=deployments/$s/Dockerfile
	for line in "${required[@]}"; do
		grep -qxF -- "${line//SERVICE/$s}" "$df" || fail "$df lacks the line: ${line//SERVICE/$s}"
	done
	grep -qE '^EXPOSE .*\b9100\b' "$df" || fail "$df does not expose the metrics port 9100"
	grep -qE '^ENV METRICS_ADDR=0\.0\.0\.0:9100' "$df" ||
		fail "$df does not set METRICS_ADDR=0.0.0.0:9100, which its health check needs"
	if ! diff -u <(normal extractor) <(normal "$s") >/dev/null; then
		diff -u <(normal extractor) <(normal "$s") >&2 || true
		fail "$df has drifted from deployments/extractor/Dockerfile"
	fi
done
say "Dockerfiles: ok"

# --- NATS configuration and the mongo init script -----------------------------------------
nats_server=""
if [[ -x .local/bin/nats-server ]]; then
	nats_server=.local/bin/nats-server
elif command -v nats-server >/dev/null 2>&1; then
	nats_server=nats-server
fi
if [[ -n $nats_server ]]; then
	conf=$(mktemp "${TMPDIR:-/tmp}/validate-nats.XXXXXX")
	sed 's#store_dir: /data/jetstream#store_dir: '"${conf}.store"'#' deployments/nats/nats.conf \
		>"$conf"
	if ! out=$("$nats_server" -c "$conf" -t 2>&1); then
		rm -rf "$conf" "${conf}.store"
		echo "$out" >&2
		fail "deployments/nats/nats.conf is not valid"
	fi
	rm -rf "$conf" "${conf}.store"
	say "deployments/nats/nats.conf: ok ($("$nats_server" --version 2>&1 | head -n 1))"
else
	say "deployments/nats/nats.conf: not checked, no nats-server (make tools builds one)"
fi
if command -v node >/dev/null 2>&1; then
	node --check deployments/mongo/init/10-app-user.js ||
		fail "deployments/mongo/init/10-app-user.js does not parse"
	say "deployments/mongo/init/10-app-user.js: ok"
else
	say "deployments/mongo/init/10-app-user.js: not checked, no node"
fi
say "all checks passed"
