# nri-lifecycle — run `make help` for the targets.

PREFIX      ?= /usr/local
DESTDIR     ?=
PLUGIN_DIR  ?= /opt/nri/plugins
PLUGIN_IDX  ?= 10
CARGO       ?= cargo
# Everything downloaded or built for tests stays inside the tree, in .cache/harness
# (NRI_HARNESS_CACHE overrides it).

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
RELEASE_BIN := $(CARGO_TARGET_DIR)/release/nri-lifecycle

.PHONY: help build release deps test unit e2e demo bench install uninstall fmt lint clean cleanup-nodes

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## debug build of the plugin (the gate is built and embedded by build.rs)
	$(CARGO) build --workspace

release: ## optimised, stripped plugin binary at target/release/nri-lifecycle
	$(CARGO) build --release --bin nri-lifecycle

deps: ## install what builds and tests need (Debian packages; containerd 1.7/2.1 + CNI unpacked into .cache)
	bash harness/scripts/setup.sh

test: deps ## all tests: unit, integration (root), real-containerd end-to-end on 1.7.24 and 2.1.9
	$(CARGO) build --workspace --all-targets
	NRI_E2E_REQUIRED=1 $(CARGO) test --workspace -- --test-threads=2

unit: ## unit tests only (no root, no containerd)
	$(CARGO) test --workspace --lib

demo: deps release ## a private containerd with the plugin, a pod with hooks, and what happened
	$(CARGO) run -q -p nri-harness --bin demo -- --plugin $(RELEASE_BIN)

bench: deps release ## benchmarks, side by side in one run; writes BENCHMARKS.md (BENCH_FLAGS=... for more rounds)
	$(CARGO) run --release -q -p nri-harness --bin bench -- --plugin $(RELEASE_BIN) --output BENCHMARKS.md $(BENCH_FLAGS)

install: release ## install the plugin as $(DESTDIR)$(PLUGIN_DIR)/$(PLUGIN_IDX)-nri-lifecycle
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(PLUGIN_DIR)/$(PLUGIN_IDX)-nri-lifecycle
	install -D -m 0644 packaging/containerd-1.7-nri.toml $(DESTDIR)$(PREFIX)/share/nri-lifecycle/containerd-1.7-nri.toml
	install -D -m 0644 packaging/containerd-2.x-nri.toml $(DESTDIR)$(PREFIX)/share/nri-lifecycle/containerd-2.x-nri.toml
	install -D -m 0644 packaging/nri-lifecycle.conf $(DESTDIR)$(PREFIX)/share/nri-lifecycle/nri-lifecycle.conf

uninstall: ## remove what install put in place
	rm -f $(DESTDIR)$(PLUGIN_DIR)/$(PLUGIN_IDX)-nri-lifecycle
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
