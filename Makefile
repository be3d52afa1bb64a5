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

.PHONY: demo test deps build release clean

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
	$(SWIFT) build -c release --product strait

## Side by side on this machine: what the kernel supports, then plain TCP against accelerated.
demo: release
	$(SWIFT) build -c release --product straitnet-http
	$(SUDO) .build/release/strait doctor
	$(SUDO) .build/release/strait bench accel --duration 2

## Every test, on the real kernel (root needed; under CI=true nothing is skipped). Serial, because
## tests move this process between cgroups and count its open descriptors.
test: deps
	$(SWIFT) build --build-tests
	$(SUDO) env CI=$(CI) $(SWIFT) test --skip-build --no-parallel

clean:
	rm -rf .build
