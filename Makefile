# ClusterWare multi-head: build, run, test, benchmark.
#   make run    build and start a solo head on the embedded database, with demo nodes
#   make test   install what the tests need (as root, with apt-get), then run the whole suite
#   make bench  run the benchmarks and write BENCHMARKS.md

SHELL := /bin/bash
CARGO ?= cargo
# Debian packages the tests and benchmarks use: the etcd server (a real cluster database),
# protoc (etcd-client compiles etcd's protobuf definitions at build time), curl (make run).
APT_PACKAGES := etcd-server protobuf-compiler curl
# The command that proves each package is installed.
NEEDS := etcd protoc curl

.PHONY: all build deps run test bench fmt clean

all: build

deps:
	@missing=""; for c in $(NEEDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(APT_PACKAGES) (missing:$$missing)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	  else \
	    echo "missing:$$missing. Install them as root: apt-get install -y $(APT_PACKAGES)"; exit 1; \
	  fi; \
	fi

build: deps
	$(CARGO) build --workspace

run: build
	@scripts/run-solo.sh

# The integration tests start the binaries the workspace build produced, so build first.
# The last line sums cargo's per-target results into one "N passed, N failed" line.
test: build
	@set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log; status=$$?; \
	awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log; \
	exit $$status

bench: deps
	$(CARGO) build --release --workspace
	target/release/cw-bench --output BENCHMARKS.md

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf run
