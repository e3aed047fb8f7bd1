# attack-etl: the two commands a newcomer needs are `make demo` (the whole pipeline once, on the
# real ATT&CK bundles) and `make test` (every test). Everything they need is built or installed
# here: nats-server and FerretDB from the Go module proxy at pinned versions, PostgreSQL from
# Debian when it is missing, mongosh from npm for the documented-query tests.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
export GOFLAGS := -buildvcs=false

NATS_SERVER_VERSION := v2.12.3
MONGOSH_VERSION := 2.12.0
LOCAL := .local
TOOLS := $(LOCAL)/bin
BIN := bin
SERVICES := extractor transformer loader mirror etlctl
MODULES := shared $(addprefix services/,$(SERVICES)) tests/e2e
TEST_TIMEOUT ?= 80m

.PHONY: all demo test build tools postgres mongosh unit e2e lint compose-check bench replay \
	stack dlq env-example clean

all: build

## demo: run the whole pipeline once on the real ATT&CK 18.1 bundles and print a summary.
demo: build tools
	$(BIN)/etlctl run

## replay: re-transform every raw object of the local stack's raw stream and reload it.
replay: build tools
	$(BIN)/etlctl replay

## stack: keep the local nats-server and FerretDB up (for mongosh queries) until Ctrl-C.
stack: build tools
	$(BIN)/etlctl stack

## dlq: count the dead letters of the local stack.
dlq: build tools
	$(BIN)/etlctl dlq count

## test: every test: formatting, vet, unit and end-to-end tests, compose validation.
test: build tools mongosh lint compose-check
	go test -count=1 -timeout $(TEST_TIMEOUT) $(addsuffix /...,$(addprefix ./,$(MODULES)))

## unit: the tests that need no local stack (quick).
unit:
	go test -count=1 -short $(addsuffix /...,$(addprefix ./,$(MODULES)))

## build: the service binaries, into bin/.
build:
	@mkdir -p $(BIN)
	@for s in $(SERVICES); do \
		echo "go build $$s"; \
		go build -o $(BIN)/$$s ./services/$$s || exit 1; \
	done

## tools: nats-server and ferretdb into .local/bin, and PostgreSQL for FerretDB's back end.
tools: $(TOOLS)/nats-server $(TOOLS)/ferretdb postgres

$(TOOLS)/nats-server:
	@mkdir -p $(TOOLS)
	GOBIN=$(abspath $(TOOLS)) GOWORK=off go install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION)

$(TOOLS)/ferretdb: tools/ferretdb/main.go tools/ferretdb/go.mod
	@mkdir -p $(TOOLS)
	cd tools/ferretdb && GOWORK=off go build -o $(abspath $(TOOLS))/ferretdb .

# FerretDB stores its data in PostgreSQL (single updates are 15 ms there against 100+ ms on
# SQLite). Debian's package is installed when its programs are missing and we are root;
# otherwise the local stack falls back to SQLite and says so.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing PostgreSQL from Debian"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
		echo "PostgreSQL not found and not root: FerretDB will use SQLite (slower updates)"; \
	fi

## mongosh: the MongoDB shell from npm, used to test the README's queries.
mongosh: $(LOCAL)/node/node_modules/.bin/mongosh

$(LOCAL)/node/node_modules/.bin/mongosh:
	@mkdir -p $(LOCAL)/node
	cd $(LOCAL)/node && npm install --no-audit --no-fund --silent mongosh@$(MONGOSH_VERSION) >/dev/null

## lint: gofmt and go vet over every module.
lint:
	@out=$$(gofmt -l shared services tests tools); if [ -n "$$out" ]; then \
		echo "not gofmt-clean:"; echo "$$out"; exit 1; fi
	go vet $(addsuffix /...,$(addprefix ./,$(MODULES)))

## compose-check: validate docker-compose.yml (there is no Docker engine here to run it).
compose-check:
	bash deployments/validate-compose.sh

## bench: throughput and memory of every stage on the real bundles; writes docs/benchmarks.md.
bench: build tools
	@mkdir -p docs $(LOCAL)
	BENCH_OUT=$(abspath docs/benchmarks.md) go test -run '^$$' -bench . -benchtime 1x \
		-timeout 90m $(addsuffix /...,$(addprefix ./,$(MODULES))) | tee $(LOCAL)/bench.txt

## env-example: regenerate .env.example from the configuration catalogue.
env-example: build
	$(BIN)/etlctl env-example > .env.example

clean:
	rm -rf $(BIN) $(LOCAL)/stack $(LOCAL)/logs
