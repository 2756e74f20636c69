# nri-lifecycle — run `make help` for the targets.

PREFIX      ?= /usr/local
DESTDIR     ?=
PLUGIN_DIR  ?= /opt/nri/plugins
PLUGIN_IDX  ?= 10
# systemd searches $(PREFIX)/lib/systemd/system for PREFIX /usr/local and /usr alike.
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
CONFIG_DIR  ?= /etc/nri-lifecycle
CARGO       ?= cargo
# Everything downloaded or built for tests stays inside the tree, in .cache/harness
# (NRI_HARNESS_CACHE overrides it).

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
RELEASE_BIN := $(CARGO_TARGET_DIR)/release/nri-lifecycle
# The container image: a statically linked build (glibc with crt-static, libseccomp.a linked
# in with the static-seccomp feature, as a static binary cannot dlopen) of the plugin alone.
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# containerd looks up `nri-lifecycle:0.1.0` of a pod spec as docker.io/library/nri-lifecycle:0.1.0.
IMAGE_NAME  ?= docker.io/library/nri-lifecycle:$(VERSION)
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_BIN  := $(CARGO_TARGET_DIR)/$(STATIC_TARGET)/release/nri-lifecycle
IMAGE_TAR   := $(CARGO_TARGET_DIR)/image/nri-lifecycle.tar

.PHONY: help build release static image deps test unit e2e demo bench install install-systemd install-share uninstall fmt lint clean cleanup-nodes

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## debug build of the plugin (the gate is built and embedded by build.rs)
	$(CARGO) build --workspace

release: ## optimised, stripped plugin binary at target/release/nri-lifecycle
	$(CARGO) build --release --bin nri-lifecycle

static: deps ## statically linked plugin binary (for the image) at target/$(STATIC_TARGET)/release/nri-lifecycle
	RUSTFLAGS="-C target-feature=+crt-static -L native=$(dir $(shell $${CC:-cc} -print-file-name=libseccomp.a))" \
		$(CARGO) build --release --target $(STATIC_TARGET) --features static-seccomp --bin nri-lifecycle

image: static ## OCI image archive of the static plugin at target/image/nri-lifecycle.tar (name: IMAGE_NAME)
	bash packaging/build-image.sh $(STATIC_BIN) $(IMAGE_TAR) $(IMAGE_NAME)

deps: ## install what builds and tests need (Debian packages; containerd 1.7/2.1 + CNI unpacked into .cache)
	bash harness/scripts/setup.sh

test: deps image ## all tests: unit, integration (root), real-containerd end-to-end on 1.7.24 and 2.1.9
	$(CARGO) build --workspace --all-targets
	NRI_E2E_REQUIRED=1 $(CARGO) test --workspace -- --test-threads=2

unit: ## unit tests only (no root, no containerd)
	$(CARGO) test --workspace --lib

demo: deps release ## a private containerd with the plugin, a pod with hooks, and what happened
	$(CARGO) run -q -p nri-harness --bin demo -- --plugin $(RELEASE_BIN)

bench: deps release ## benchmarks, side by side in one run; writes BENCHMARKS.md (BENCH_FLAGS=... for more rounds)
	$(CARGO) run --release -q -p nri-harness --bin bench -- --plugin $(RELEASE_BIN) --output BENCHMARKS.md $(BENCH_FLAGS)

install: release install-share ## drop-in: the plugin as $(DESTDIR)$(PLUGIN_DIR)/$(PLUGIN_IDX)-nri-lifecycle, started by containerd
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(PLUGIN_DIR)/$(PLUGIN_IDX)-nri-lifecycle

# The two ways exclude each other (one lock per runtime: the unit's plugin would wait for the
# drop-in's daemon, see the README): this one removes the drop-in copy. The unit names the binary at /usr/local/bin; sed puts in $(PREFIX). An
# existing config is kept.
install-systemd: release install-share ## systemd: $(PREFIX)/bin/nri-lifecycle, the unit in $(SYSTEMD_UNIT_DIR), $(CONFIG_DIR)/config.toml
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(PREFIX)/bin/nri-lifecycle
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed 's|/usr/local/bin/nri-lifecycle|$(PREFIX)/bin/nri-lifecycle|; s|/etc/nri-lifecycle/|$(CONFIG_DIR)/|' \
		packaging/nri-lifecycle.service >$(DESTDIR)$(SYSTEMD_UNIT_DIR)/nri-lifecycle.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/nri-lifecycle.service
	test -e $(DESTDIR)$(CONFIG_DIR)/config.toml || \
		install -D -m 0644 packaging/nri-lifecycle.conf $(DESTDIR)$(CONFIG_DIR)/config.toml
	rm -f $(DESTDIR)$(PLUGIN_DIR)/$(PLUGIN_IDX)-nri-lifecycle

install-share:
	install -D -m 0644 packaging/containerd-1.7-nri.toml $(DESTDIR)$(PREFIX)/share/nri-lifecycle/containerd-1.7-nri.toml
	install -D -m 0644 packaging/containerd-2.x-nri.toml $(DESTDIR)$(PREFIX)/share/nri-lifecycle/containerd-2.x-nri.toml
	install -D -m 0644 packaging/nri-lifecycle.conf $(DESTDIR)$(PREFIX)/share/nri-lifecycle/nri-lifecycle.conf
	install -D -m 0644 packaging/nri-lifecycle.service $(DESTDIR)$(PREFIX)/share/nri-lifecycle/nri-lifecycle.service

uninstall: ## remove what install and install-systemd put in place (keeps $(CONFIG_DIR) and the logs)
	rm -f $(DESTDIR)$(PLUGIN_DIR)/$(PLUGIN_IDX)-nri-lifecycle
	rm -f $(DESTDIR)$(PREFIX)/bin/nri-lifecycle
	rm -f $(DESTDIR)$(SYSTEMD_UNIT_DIR)/nri-lifecycle.service
	rm -rf $(DESTDIR)$(PREFIX)/share/nri-lifecycle

fmt: ## format the code
	$(CARGO) fmt --all

lint: ## formatting and clippy checks
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

cleanup-nodes: ## remove leftovers of an interrupted end-to-end run (processes, mounts, netns, bridge)
	$(CARGO) run -q -p nri-harness --bin cleanup

clean: ## remove build output (keeps the download cache)
	$(CARGO) clean
