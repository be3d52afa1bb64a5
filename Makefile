# Strait: two commands. `make demo` measures on this machine; `make test` runs the tests.
# Both first install what is missing (Debian packages), then build.

SWIFT ?= swift
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# Build: libbpf through pkg-config. Benchmarks and tests: the peers and iproute2 for namespaces.
APT_PACKAGES := pkg-config libbpf-dev libelf-dev zlib1g-dev iproute2 bpftool iperf3 sockperf haproxy wrk nftables iptables
# The deploy checks: systemd-analyze (package systemd) lints the units, kubernetes-validate (PyPI,
# schemas bundled: it runs offline) the manifests.
APT_PACKAGES += systemd
PIP_PACKAGES := kubernetes-validate

# `make install PREFIX=/usr/local DESTDIR=` (DESTDIR stages a package's tree).
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR := $(DESTDIR)$(PREFIX)/bin
UNITDIR := $(DESTDIR)$(PREFIX)/lib/systemd/system
MANDIR := $(DESTDIR)$(PREFIX)/share/man/man1
BASHDIR := $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHDIR := $(DESTDIR)$(PREFIX)/share/zsh/site-functions
FISHDIR := $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
DOCDIR := $(DESTDIR)$(PREFIX)/share/doc/strait
UNITS := $(wildcard deploy/systemd/*.service)
# Installed builds carry the Swift runtime inside: they run on a machine without the toolchain.
RELEASE_FLAGS := -c release --static-swift-stdlib
# Completions and man pages, generated from the built binary by swift-argument-parser.
GENERATED := .build/strait-install

.PHONY: demo test deps build release bench clean install uninstall install-files install-test fuzz fuzz-build fuzz-run fuzz-smoke

## Install the Debian packages that are missing (no-op when all are there).
deps:
	@missing=""; for package in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@for package in $(PIP_PACKAGES); do \
		python3 -m pip show -q $$package >/dev/null 2>&1 || python3 -m pip install -q $$package; \
	done

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build $(RELEASE_FLAGS) --product strait

## The benchmarks, a separate executable (`strait bench …` runs it from beside strait).
bench: deps
	$(SWIFT) build $(RELEASE_FLAGS) --product strait-bench

## Side by side on this machine: what the kernel supports, then plain TCP against accelerated.
demo: release bench
	$(SWIFT) build $(RELEASE_FLAGS) --product straitnet-http
	$(SUDO) .build/release/strait doctor
	$(SUDO) .build/release/strait bench accel --duration 2

## Every test, on the real kernel (root needed; under CI=true nothing is skipped). Serial, because
## tests move this process between cgroups and count its open descriptors.
test: deps
	$(SWIFT) build --build-tests
	$(SUDO) env CI=$(CI) $(SWIFT) test --skip-build --no-parallel
	$(MAKE) install-test
	$(MAKE) fuzz-smoke

## Installs to a temporary prefix and runs the installed strait with .build hidden (Tests/install).
install-test: release
	$(SUDO) env CI=$(CI) Tests/install/install-test.sh

## The binary, the systemd units (deploy/systemd, when there), completions, man pages, the license.
install: release
	rm -rf $(GENERATED) && mkdir -p $(GENERATED)/man
	.build/release/strait --generate-completion-script bash > $(GENERATED)/strait.bash
	.build/release/strait --generate-completion-script zsh > $(GENERATED)/_strait
	.build/release/strait --generate-completion-script fish > $(GENERATED)/strait.fish
	$(SWIFT) build --product generate-manual
	.build/debug/generate-manual .build/release/strait --multi-page --output-directory $(GENERATED)/man \
		$$(git log -1 --format=--date=%cs 2>/dev/null)
	$(SUDO) $(MAKE) --no-print-directory install-files PREFIX=$(PREFIX) DESTDIR=$(DESTDIR)

# Copies only: runs as root without touching the build.
install-files:
	install -d $(BINDIR) $(MANDIR) $(BASHDIR) $(ZSHDIR) $(FISHDIR) $(DOCDIR)
	install -m 0755 .build/release/strait $(BINDIR)/strait
	install -m 0644 $(GENERATED)/man/*.1 $(MANDIR)/
	install -m 0644 $(GENERATED)/strait.bash $(BASHDIR)/strait
	install -m 0644 $(GENERATED)/_strait $(ZSHDIR)/_strait
	install -m 0644 $(GENERATED)/strait.fish $(FISHDIR)/strait.fish
	install -m 0644 LICENSE README.md $(DOCDIR)/
	$(if $(UNITS),install -d $(UNITDIR))
	$(foreach unit,$(UNITS),sed 's|/usr/local/bin/strait|$(PREFIX)/bin/strait|g' $(unit) > $(UNITDIR)/$(notdir $(unit)) && chmod 0644 $(UNITDIR)/$(notdir $(unit));)

## Removes what `install` put there (same PREFIX and DESTDIR).
uninstall:
	$(SUDO) rm -f $(BINDIR)/strait $(MANDIR)/strait.1 $(MANDIR)/strait.*.1 $(BASHDIR)/strait $(ZSHDIR)/_strait $(FISHDIR)/strait.fish
	$(SUDO) rm -rf $(DOCDIR)
	$(foreach unit,$(UNITS),$(SUDO) rm -f $(UNITDIR)/$(notdir $(unit));)

## Fuzzing (README, "Reliability"): libFuzzer on the parsers of hostile input, each for
## FUZZ_SECONDS. The targets are built with the fuzzer and AddressSanitizer in a scratch folder of
## their own; new inputs go to $(FUZZ_SCRATCH)/corpus, crashes to $(FUZZ_SCRATCH)/crashes (each
## becomes a unit test and a fix). The committed seeds in Fuzz/corpus are read, never written.
## Leak detection is off: Swift's lazily made globals and runtime caches read as one-time leaks;
## memory that grows is still caught by -rss_limit_mb, and a slow input by -timeout.
FUZZ_TARGETS := config drop-rules rpc-frame metrics-request proxy-header
FUZZ_SECONDS ?= 60
FUZZ_SCRATCH := .build-fuzz
# Package.swift adds the sanitizer flags when STRAIT_FUZZ is set (all but the build-time tool).

fuzz: deps
	$(MAKE) fuzz-run FUZZ_SECONDS=$(FUZZ_SECONDS)

## `make test`'s last step: every target for a few seconds, so CI catches a parser regression.
fuzz-smoke:
	$(MAKE) fuzz-run FUZZ_SECONDS=5

fuzz-build:
	for target in $(FUZZ_TARGETS); do \
		STRAIT_FUZZ=1 $(SWIFT) build --scratch-path $(FUZZ_SCRATCH) --product fuzz-$$target || exit 1; \
	done

fuzz-run: fuzz-build
	mkdir -p $(FUZZ_SCRATCH)/crashes
	for target in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_SCRATCH)/corpus/$$target; \
		ASAN_OPTIONS=detect_leaks=0 nice -n 10 $(FUZZ_SCRATCH)/debug/fuzz-$$target -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
			-max_len=65536 -detect_leaks=0 -print_final_stats=1 -artifact_prefix=$(FUZZ_SCRATCH)/crashes/$$target- \
			$$(test -f Fuzz/$$target.dict && echo -dict=Fuzz/$$target.dict) \
			$(FUZZ_SCRATCH)/corpus/$$target Fuzz/corpus/$$target || exit 1; \
	done

clean:
	rm -rf .build $(FUZZ_SCRATCH)
