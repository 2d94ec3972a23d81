# smtpq: see README.md. Every target works on a fresh clone with Go installed.
GO        ?= go
BIN       := bin/smtpq
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
DEVCONFIG := testdata/dev/smtpq.yaml
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.7.0

.PHONY: all build run run-cluster test test-short lint vet fmt-check cross demo bench bench-scale bench-cluster fuzz test-crash clean \
	deb msi release test-packages pkgtool test-producers test-windows test-msi-wine

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/smtpq

# Runs the service in the foreground on the development config: on first run
# it creates the spool folders and keys under .dev/ and prints where they are.
# Ctrl-C stops the service and the sink, and the script exits 0.
run: build
	testdata/dev/run.sh

# A local three-node cluster: three smtpq nodes, each with an embedded NATS
# server clustered with the others on loopback ports, one stream kept three
# times, the dev sink on 127.0.0.1:2527; everything under .dev/cluster/. It
# prints how to enqueue and what to watch. Ctrl-C stops all of it, and the
# script exits 0.
run-cluster: build
	testdata/dev/run-cluster.sh

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# go vet ./... skips testdata: the benchmark programs are vetted (and so
# built) by name.
vet:
	$(GO) vet ./... ./testdata/bench/...

cross:
	GOOS=windows GOARCH=amd64 $(GO) vet ./...
	GOOS=windows GOARCH=amd64 $(GO) build -o /dev/null ./cmd/smtpq
	GOOS=darwin GOARCH=arm64 $(GO) vet ./...
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./cmd/smtpq

test: fmt-check vet cross
	$(GO) test -race -count=1 -timeout 15m ./...

lint: vet
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf bin .dev dist

# Starts a fake SMTP server and the service, enqueues the sample messages
# (some fail on purpose) and shows where each one went.
demo: build
	testdata/dev/demo.sh

# Crash tests: build the binary, SIGKILL it at each crash point and at random
# moments while it drains, restart it, check every message is filed once.
test-crash:
	$(GO) test -tags crash -count=1 -timeout 10m -v -run 'TestCrash' ./cmd/smtpq/

# Native Go fuzzing, FUZZTIME per target. A crasher is saved by go test under
# the package's testdata/fuzz/ and stays as a regression case: commit it.
# FUZZTIME is a duration (20s) or a count of executions (5000x). CI gives a
# count: with a duration, Go 1.26's fuzz coordinator can fail a clean run with
# "context deadline exceeded" when a loaded machine starves its workers at the
# deadline (golang/go#75804, fixed in Go 1.27).
# FuzzSpoolNames creates and files real files: FUZZTIME_SPOOL, if given,
# bounds it apart (CI gives it a smaller count).
FUZZTIME ?= 20s
FUZZTIME_SPOOL ?= $(FUZZTIME)
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzOpen$$' -fuzztime $(FUZZTIME) ./pipeline/queuefile/
	$(GO) test -run '^$$' -fuzz '^FuzzStrip$$' -fuzztime $(FUZZTIME) ./pipeline/queuefile/
	$(GO) test -run '^$$' -fuzz '^FuzzOpenPickup$$' -fuzztime $(FUZZTIME) ./pipeline/queuefile/
	$(GO) test -run '^$$' -fuzz '^FuzzXMLLog$$' -fuzztime $(FUZZTIME) ./stages/
	$(GO) test -run '^$$' -fuzz '^FuzzSpoolNames$$' -fuzztime $(FUZZTIME_SPOOL) ./pipeline/spool/
	$(GO) test -run '^$$' -fuzz '^FuzzTranscript$$' -fuzztime $(FUZZTIME) ./stages/smtpclient/

# Issue 5's benchmarks (testdata/bench/README.md): drains of bin/smtpq against
# a bare client and a private Postfix, pickup latency, a rate-limited host, a
# 200 MB message and the Go micro-benchmarks with a profiled in-process
# drain. Installs postfix (for smtp-sink) from Debian if it is missing and
# we are root (.ci/install-packages). Prints a table and writes
# bench/out/results.md. Loopback only;
# settings through the environment (BENCH_N=2000, BENCH_ONLY=drain,...).
bench: build
	bash .ci/install-packages
	$(GO) vet ./testdata/bench/...
	$(GO) run ./testdata/bench/harness -suite bench

# The 1,000,000-file backlog (SCALE_N=100000 for a quick check); writes
# bench/out/results-scale.md. Needs about 10 GB of free disk for 1M files.
bench-scale: build
	bash .ci/install-packages
	$(GO) vet ./testdata/bench/...
	$(GO) run ./testdata/bench/harness -suite scale

# Issue 12's cluster benchmark (testdata/bench/README.md): the same backlog
# published to a NATS JetStream stream, drained by 1, 2 and 3 nodes
# (bin/smtpq run) on an R1 and an R3 stream, and by one node on an embedded
# R1 stream, against the directory spool in the same round; msg/s, CPU per
# message, scaling. Writes bench/out/results-cluster.md. Loopback only; about
# 4 minutes; CLUSTER_N=3000, CLUSTER_CAP=8, CLUSTER_REPEAT=3.
bench-cluster: build
	bash .ci/install-packages
	$(GO) vet ./testdata/bench/...
	$(GO) run ./testdata/bench/harness -suite cluster

# Packages (README.md, Install). Sources in cmd/smtpq/packaging, a module of
# its own so that the packager's dependencies stay out of smtpq's go.mod.
# Everything lands in dist/ (git ignores it); binaries are static
# (CGO_ENABLED=0) and built with -trimpath. Versions come from git describe
# (v1.2.3-4-gabc: deb 1.2.3+git4.gabc, msi 1.2.3; no tag: 0.0.0~gabc and
# 0.0.0); DEB_VERSION=... and MSI_VERSION=... override them.
DIST        := dist
PKGDIR      := cmd/smtpq/packaging
PKGTOOL     := $(DIST)/tools/pkgtool
DEB_ARCH    ?= amd64
GOBUILD_REL  = CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w"
debv         = $(or $(DEB_VERSION),$$($(PKGTOOL) debversion '$(VERSION)'))
msiv         = $(or $(MSI_VERSION),$$($(PKGTOOL) msiversion '$(VERSION)'))

pkgtool:
	$(GO) -C $(PKGDIR) vet ./...
	$(GO) -C $(PKGDIR) build -o $(abspath $(PKGTOOL)) ./pkgtool

# The Debian package for DEB_ARCH (amd64 or arm64): dist/smtpq_<v>_<arch>.deb.
deb: pkgtool
	GOOS=linux GOARCH=$(DEB_ARCH) $(GOBUILD_REL) -o $(DIST)/build/linux_$(DEB_ARCH)/smtpq ./cmd/smtpq
	$(PKGTOOL) deb -bin $(DIST)/build/linux_$(DEB_ARCH)/smtpq -arch $(DEB_ARCH) -version "$(debv)" -out $(DIST)

# The Windows installer, built here with wixl (msitools), finished with
# msibuild (what wixl 0.101 cannot write: finish-msi.sh), then read back with
# msiinfo to check its tables (check-msi.sh).
msi: pkgtool
	GOOS=windows GOARCH=amd64 $(GOBUILD_REL) -o $(DIST)/build/windows_amd64/smtpq.exe ./cmd/smtpq
	set -e; out=$(DIST)/smtpq_$(debv)_windows_amd64.msi; \
	wixl -a x64 -D Version=$(msiv) -D BinDir=$(DIST)/build/windows_amd64 -D PkgDir=$(PKGDIR)/windows \
		-o $$out $(PKGDIR)/windows/smtpq.wxs; \
	$(PKGDIR)/windows/finish-msi.sh $$out; \
	echo $$out; $(PKGDIR)/windows/check-msi.sh $$out

# The .msi installed, refused, upgraded and uninstalled in a Wine prefix of
# its own (about 30 s; .ci/run runs it): see windows/test-msi-wine.sh.
test-msi-wine: msi
	$(PKGDIR)/windows/test-msi-wine.sh $(DIST)/build/windows_amd64

# Everything for a release, in dist/: the .deb for amd64 and arm64, the .msi,
# tar.gz (zip for Windows) archives for linux/amd64, linux/arm64,
# windows/amd64 and darwin/arm64, and SHA256SUMS over them.
RELEASE_TARGETS := linux/amd64 linux/arm64 windows/amd64 darwin/arm64
release: pkgtool
	rm -f $(DIST)/*.deb $(DIST)/*.msi $(DIST)/*.tar.gz $(DIST)/*.zip $(DIST)/SHA256SUMS
	set -e; v=$(debv); m=$(msiv); \
	$(MAKE) --no-print-directory deb DEB_ARCH=amd64 DEB_VERSION="$$v"; \
	$(MAKE) --no-print-directory deb DEB_ARCH=arm64 DEB_VERSION="$$v"; \
	$(MAKE) --no-print-directory msi DEB_VERSION="$$v" MSI_VERSION="$$m"; \
	for t in $(RELEASE_TARGETS); do \
		os=$${t%/*}; arch=$${t#*/}; exe=smtpq; [ $$os = windows ] && exe=smtpq.exe; \
		GOOS=$$os GOARCH=$$arch $(GOBUILD_REL) -o $(DIST)/build/$${os}_$$arch/$$exe ./cmd/smtpq; \
		$(PKGTOOL) archive -bin $(DIST)/build/$${os}_$$arch/$$exe -goos $$os -goarch $$arch -version "$$v" -out $(DIST); \
	done
	$(PKGTOOL) sums $(DIST)
	cd $(DIST) && sha256sum -c --quiet SHA256SUMS

# Installs the .deb on THIS machine (root, apt-get), sends mail through it
# with mail(1) and cron's sendmail command line to a loopback sink, upgrades
# it over itself, purges it, and puts postfix back. Skips, saying so, when not
# root or without apt-get. See $(PKGDIR)/test-packages.sh.
test-packages: pkgtool
	$(PKGDIR)/test-packages.sh

# Issue 14: the programs that call sendmail, for real (bsd-mailx with and
# without -r, PHP's mail() as www-data through README's permission recipe,
# git send-email, Python piping to sendmail -t -oi), against smtpq built
# from this checkout, to a sink on 127.0.0.1. Needs root and the programs
# (bash .ci/install-packages): it adds the user and group smtpq-ptest for
# the run and removes them. About 15 s.
test-producers:
	SMTPQ_REQUIRE_PRODUCERS=1 $(GO) test -count=1 -v -run '^TestProducers' ./cmd/smtpq/

# Issue 14: the Windows build under Wine (Debian's wine64): GOOS=windows go
# test of the packages Wine can run, then smtpq.exe keygen, enqueue,
# sendmail, run (to a loopback sink) and service install/status/uninstall.
# The Wine prefix is kept in .dev/wine (WINEPREFIX= to put it elsewhere).
# See testdata/windows/test-windows.sh and README.md (Windows). About 3.5
# minutes.
test-windows:
	testdata/windows/test-windows.sh
