# Strait: two commands. `make demo` measures on this machine; `make test` runs the tests.
# Both first install what is missing (Debian packages), then build.

SWIFT ?= swift
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# Build: libbpf through pkg-config. Benchmarks and tests: the peers and iproute2 for namespaces.
APT_PACKAGES := pkg-config libbpf-dev libelf-dev zlib1g-dev iproute2 bpftool iperf3 sockperf haproxy wrk nftables iptables

.PHONY: demo test deps build release clean fuzz fuzz-build fuzz-run fuzz-smoke

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

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product strait

## Side by side on this machine: what the kernel supports, then plain TCP against accelerated.
demo: release
	$(SUDO) .build/release/strait doctor
	$(SUDO) .build/release/strait bench accel --duration 2

## Every test, on the real kernel (root needed; under CI=true nothing is skipped). Serial, because
## tests move this process between cgroups and count its open descriptors.
test: deps
	$(SWIFT) build --build-tests
	$(SUDO) env CI=$(CI) $(SWIFT) test --skip-build --no-parallel
	$(MAKE) fuzz-smoke

## Fuzzing (README, "Reliability"): libFuzzer on the parsers of hostile input, each for
## FUZZ_SECONDS. The targets are built with the fuzzer and AddressSanitizer in a scratch folder of
## their own; new inputs go to $(FUZZ_SCRATCH)/corpus, crashes to $(FUZZ_SCRATCH)/crashes (each
## becomes a unit test and a fix). The committed seeds in Fuzz/corpus are read, never written.
## Leak detection is off: Swift's lazily made globals and runtime caches read as one-time leaks;
## memory that grows is still caught by -rss_limit_mb, and a slow input by -timeout.
FUZZ_TARGETS := config drop-rules rpc-frame metrics-request
FUZZ_SECONDS ?= 60
FUZZ_SCRATCH := .build-fuzz
FUZZ_FLAGS := -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xcc -fsanitize=fuzzer-no-link,address

fuzz: deps
	$(MAKE) fuzz-run FUZZ_SECONDS=$(FUZZ_SECONDS)

## `make test`'s last step: every target for a few seconds, so CI catches a parser regression.
fuzz-smoke:
	$(MAKE) fuzz-run FUZZ_SECONDS=5

fuzz-build:
	for target in $(FUZZ_TARGETS); do \
		$(SWIFT) build --scratch-path $(FUZZ_SCRATCH) --product fuzz-$$target $(FUZZ_FLAGS) || exit 1; \
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
