# ClusterWare multi-head: build, run, test, benchmark.
#   make run    build and start a solo head on the embedded database, with demo nodes
#   make test   install what the tests need (as root, with apt-get), then run the whole suite
#   make bench  run the benchmarks and write BENCHMARKS.md
#   make agent  build the static node agent (target/x86_64-unknown-linux-gnu/agent/clusterware-node)

SHELL := /bin/bash
CARGO ?= cargo
# Debian packages the tests use: the etcd server (a real cluster database), protoc (etcd-client
# compiles etcd's protobuf definitions at build time), etcd-client (etcdctl: `managedb recover`
# restores a head's data as a new one-member cluster with it), curl (make run, TFTP tests), ipmitool (power
# control drives it), openipmi (ipmi_sim, the BMCs the power tests talk to), iproute2 (network
# namespaces), ipxe (the binaries heads serve over TFTP), busybox-static (udhcpc; the static
# busybox of the end-to-end root image) and isc-dhcp-client
# (dhclient) as real DHCP clients, qemu-system-x86 with ipxe-qemu (a real PXE client), kmod
# (depmod, for the unpacked test kernel's modules.dep).
APT_PACKAGES := etcd-server etcd-client protobuf-compiler curl ipmitool openipmi iproute2 ipxe busybox-static \
	isc-dhcp-client qemu-system-x86 ipxe-qemu kmod
# And for make bench: nginx (the file server's peer), dnsmasq and Kea's perfdhcp (the DHCP peers).
BENCH_APT_PACKAGES := nginx-light dnsmasq-base kea-admin

.PHONY: all build agent netboot-kernel deps bench-deps run test bench fmt clean

# The node agent runs as /init in an initramfs: one static binary, no dynamic libraries.
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT_BIN := target/$(AGENT_TARGET)/agent/clusterware-node

all: build

# install PACKAGES: apt-get install the Debian packages that are not installed yet.
define install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing:$$missing. Install them as root: apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

deps:
	$(call install,$(APT_PACKAGES))

bench-deps: deps
	$(call install,$(BENCH_APT_PACKAGES))

build: deps
	$(CARGO) build --workspace

agent: deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile agent -p clusterware-node --target $(AGENT_TARGET)
	@if ldd $(AGENT_BIN) 2>&1 | grep -qE 'not a dynamic executable|statically linked'; then \
	  echo "$(AGENT_BIN): static, $$(stat -c %s $(AGENT_BIN)) bytes"; \
	else echo "$(AGENT_BIN) is not static:"; ldd $(AGENT_BIN); exit 1; fi

run: build
	@scripts/run-solo.sh

# The integration tests start the binaries the workspace build produced, so build first.
# The last line sums cargo's per-target results into one "N passed, N failed" line.
# Debian's kernel for the network-boot tests (apt-get download + dpkg -x into target/netboot).
netboot-kernel: deps
	@scripts/fetch-kernel.sh >/dev/null

test: build agent netboot-kernel
	@set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log; status=$$?; \
	awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log; \
	exit $$status

bench: bench-deps agent netboot-kernel
	$(CARGO) build --release --workspace
	target/release/cw-bench --output BENCHMARKS.md

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf run
