# ClusterWare multi-head: build, run, test, benchmark.
#   make run    build and start a solo head on the embedded database, with demo nodes
#   make test   install what the tests need (as root, with apt-get), then run the whole suite
#   make test-clean  what CI runs: make test, make run and the packages, each in a pristine Debian root
#   make deb    build the Debian packages clusterware and clusterware-node into target/debian
#   make bench  run the benchmarks and write BENCHMARKS.md
#   make agent  build the static node agent (target/x86_64-unknown-linux-gnu/agent/clusterware-node)

SHELL := /bin/bash
CARGO ?= cargo
# Debian packages, by what needs them. Each target installs its list with apt-get (as root) before
# it runs; nothing else is assumed but Debian's base system, make and Rust (rustup).
#
# Building: a C compiler and linker for Rust and for crates with C parts (gcc, libc6-dev), protoc
# and the .proto files it includes (etcd-client compiles etcd's protobuf definitions at build time:
# protobuf-compiler, libprotobuf-dev, which protobuf-compiler only recommends), CA certificates
# for cargo's downloads.
BUILD_APT_PACKAGES := gcc libc6-dev protobuf-compiler libprotobuf-dev ca-certificates
# make run: the build, and curl (it waits for the head's health check).
RUN_APT_PACKAGES := $(BUILD_APT_PACKAGES) curl
# make test: the build, and what the tests run: the etcd server (a real cluster database),
# etcd-client (etcdctl: `managedb recover` restores a head's data as a new one-member cluster with
# it), curl (TFTP tests), ipmitool (power control drives it), openipmi (ipmi_sim, the BMCs the
# power tests talk to), iproute2 (network namespaces), ipxe (the binaries heads serve over TFTP),
# busybox-static (udhcpc; the static busybox of the end-to-end root image) and isc-dhcp-client
# (dhclient) as real DHCP clients, qemu-system-x86 with ipxe-qemu (a real PXE client) and ovmf
# (UEFI firmware whose own PXE and HTTP Boot clients boot the UEFI test VMs), kmod
# (depmod, for the unpacked test kernel's modules.dep), groff-base (groff checks every generated
# man page as man would format it), zsh and fish (the generated completion scripts must parse),
# prometheus (a real Prometheus scrapes the heads' metrics; promtool checks the alert rules),
# chromium and chromium-driver (the web console is tested in a real browser over WebDriver) with
# fonts-dejavu-core (text in its screenshots), python3-venv (the virtual environment that holds
# sushy-tools from PyPI, whose sushy-emulator is the Redfish BMCs the power tests talk to: see
# sushy-venv below), git (the upgrade test exports the last release's source from the history
# with `git archive` and builds it beside the tree).
TEST_APT_PACKAGES := $(RUN_APT_PACKAGES) etcd-server etcd-client ipmitool openipmi iproute2 ipxe \
	busybox-static isc-dhcp-client qemu-system-x86 ipxe-qemu ovmf kmod groff-base zsh fish \
	prometheus chromium chromium-driver fonts-dejavu-core python3-venv git
# make deb: dpkg-dev (dpkg-shlibdeps for the packages' library dependencies).
DEB_APT_PACKAGES := $(BUILD_APT_PACKAGES) dpkg-dev
# make bench: nginx (the file server's peer), dnsmasq and Kea's kea-dhcp4 (the DHCP peers) and
# Kea's perfdhcp (the DHCP load generator, in kea-admin).
BENCH_APT_PACKAGES := $(TEST_APT_PACKAGES) nginx-light dnsmasq-base kea-dhcp4-server kea-admin

.PHONY: all build agent netboot-kernel sushy-venv secureboot-files build-deps run-deps deps deb-deps bench-deps run \
	test test-clean test-run deb test-packages bench fmt clean

# The node agent runs as /init in an initramfs: one static binary, no dynamic libraries.
AGENT_TARGET := x86_64-unknown-linux-gnu
# Cargo's target directory: ./target unless CARGO_TARGET_DIR names another.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
AGENT_BIN := $(TARGET_DIR)/$(AGENT_TARGET)/agent/clusterware-node

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

build-deps:
	$(call install,$(BUILD_APT_PACKAGES))

run-deps:
	$(call install,$(RUN_APT_PACKAGES))

deps:
	$(call install,$(TEST_APT_PACKAGES))

deb-deps:
	$(call install,$(DEB_APT_PACKAGES))

# Whether kea-dhcp4-server was installed before this make ran. make expands every line of a
# recipe before it runs the first, so bench-deps sees the state from before its install line.
KEA_WAS_INSTALLED = $(shell dpkg -s kea-dhcp4-server >/dev/null 2>&1 && echo yes)

# The benchmark runs its own kea-dhcp4 in a network namespace, with its own configuration, lease
# file and directories; the machine's Kea service is never used. Debian's kea-dhcp4-server
# enables and starts kea-dhcp4-server.service on install (where systemd runs and no policy-rc.d
# forbids it). If this make installed the package and apt started the service, it is disabled
# and stopped again: that service only, nothing else is stopped or masked, and a Kea installed
# before is left as it was.
bench-deps:
	$(call install,$(BENCH_APT_PACKAGES))
	@if [ -z "$(KEA_WAS_INSTALLED)" ] && [ -d /run/systemd/system ] && \
	   systemctl is-active --quiet kea-dhcp4-server.service; then \
	  echo "apt started kea-dhcp4-server.service: systemctl disable --now kea-dhcp4-server.service"; \
	  systemctl disable --now kea-dhcp4-server.service; \
	fi

build: build-deps
	$(CARGO) build --workspace

agent: build-deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile agent -p clusterware-node --no-default-features --target $(AGENT_TARGET)
	@if ldd $(AGENT_BIN) 2>&1 | grep -qE 'not a dynamic executable|statically linked'; then \
	  echo "$(AGENT_BIN): static, $$(stat -c %s $(AGENT_BIN)) bytes"; \
	else echo "$(AGENT_BIN) is not static:"; ldd $(AGENT_BIN); exit 1; fi

run: run-deps build
	@scripts/run-solo.sh

# The integration tests start the binaries the workspace build produced, so build first.
# The last line sums cargo's per-target results into one "N passed, N failed" line.
# Debian's kernel for the network-boot tests (apt-get download + dpkg -x into target/netboot).
netboot-kernel: deps
	@scripts/fetch-kernel.sh >/dev/null

# sushy-tools from PyPI (pinned) in a virtual environment under target/: sushy-emulator with its
# fake systems driver is the Redfish BMCs of the power tests and the benchmark (tests/src/redfish.rs
# finds it there). Debian's python3 (python3-venv), not whatever python3 is first on PATH; the
# system CA bundle for pip, since PyPI may be reached through a proxy whose CA only that bundle has.
# Skipped when the pinned version is there already.
SUSHY_TOOLS_VERSION := 2.2.0
SUSHY_VENV := target/sushy-venv
sushy-venv: deps
	@if $(SUSHY_VENV)/bin/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("sushy-tools") != "$(SUSHY_TOOLS_VERSION)")' 2>/dev/null \
	  && [ -x $(SUSHY_VENV)/bin/sushy-emulator ]; then \
	  echo "$(SUSHY_VENV): sushy-tools $(SUSHY_TOOLS_VERSION)"; \
	else \
	  rm -rf $(SUSHY_VENV) && /usr/bin/python3 -m venv $(SUSHY_VENV) && \
	  $(SUSHY_VENV)/bin/pip install -q --disable-pip-version-check --cert /etc/ssl/certs/ca-certificates.crt \
	    sushy-tools==$(SUSHY_TOOLS_VERSION) && \
	  echo "$(SUSHY_VENV): sushy-tools $(SUSHY_TOOLS_VERSION) installed"; \
	fi

# Debian's signed shim, MokManager and network GRUB for the Secure Boot tests (apt-get download +
# dpkg -x into target/secureboot; never installed: shim-signed's postinst runs grub-install).
secureboot-files: deps
	@scripts/fetch-secureboot.sh >/dev/null

test: deps build agent netboot-kernel sushy-venv secureboot-files
	@set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log; status=$$?; \
	awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log; \
	exit $$status

# make test in a fresh clone inside a pristine Debian root (scripts/clean-root.sh; CI runs this);
# in another, make run with only what it installs, then the Debian packages built, installed,
# used and purged.
test-clean:
	scripts/clean-root.sh -- make test-run test-packages
	scripts/clean-root.sh -- make test

# make run as a new user runs it: the head serves, its simulated nodes come up, Ctrl-C ends it all.
test-run:
	scripts/test-run.sh

# Debian packages (clusterware, clusterware-node) in target/debian.
deb: deb-deps agent
	scripts/build-deb.sh

# Installs the packages from make deb, uses them, removes and purges them. It changes the system,
# so it runs only inside the clean root (make test-clean).
test-packages: deb
	scripts/test-packages.sh

bench: bench-deps agent netboot-kernel sushy-venv
	$(CARGO) build --release --workspace
	target/release/cw-bench --output BENCHMARKS.md

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf run
