# cellmail — `make run` starts the whole system on this machine, `make test`
# runs every test against the real components it starts.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.dev/tools
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_CONNECT_GO_VERSION := v1.21.1
export PATH := $(TOOLS):$(PATH)
TEST_FLAGS ?= -count=1 -timeout 20m
FUZZTIME ?= 30s

.PHONY: help deps build run test bench lint fuzz generate checkgenerate tools weed clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## Install PostgreSQL, Redis, etcd and mail tools from Debian if missing
	@./scripts/deps.sh

build: ## Build every binary into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

run: deps build ## Run the whole system on this machine (Ctrl-C stops it)
	$(BIN)/devstack -dir .dev

test: deps checkgenerate weed ## Run every test (starts real etcd, PostgreSQL, Redis, SeaweedFS's S3)
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) test $(TEST_FLAGS) ./...
	cd third_party/go-smtp && $(GO) test $(TEST_FLAGS) ./... # the patched copy (CELLMAIL.md)

bench: deps weed ## Run the benchmarks and print their figures (placement, router, inbound SMTP, outbound and submission, IMAP and imaptest's stress beside Dovecot, mail store, blob store, login)
	@./scripts/deps.sh bench
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./controlplane/placement/ ./router/internal/...
	$(GO) test -run '^$$' -bench 'BenchmarkRouter' -benchmem -benchtime 2s ./e2e/
	$(GO) test -run '^$$' -bench 'BenchmarkInboundSMTP' -benchtime 10000x -timeout 30m ./e2e/
	$(GO) test -run '^$$' -bench 'BenchmarkOutbound' -benchtime 2000x -timeout 30m ./e2e/
	$(GO) test -run '^$$' -bench 'BenchmarkIMAP' -benchtime 10x -timeout 30m ./e2e/
	$(GO) test -run '^$$' -bench 'BenchmarkImaptestStress' -benchtime 1x -timeout 30m ./e2e/ # imaptest's stress throughput beside Dovecot's
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 300x ./cell/internal/mailstore/
	$(GO) test -run '^$$' -bench 'BenchmarkFS' -benchmem -benchtime 3000x ./cell/internal/blobstore/
	$(GO) test -run '^$$' -bench 'BenchmarkS3' -benchmem -benchtime 300x ./cell/internal/blobstore/ # against weed's S3 on this machine
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 30x ./cell/internal/auth/

lint: tools ## buf lint, go vet, gofmt
	buf lint
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)

fuzz: ## Run each fuzz target for FUZZTIME (default 30s)
	$(GO) test -run '^$$' -fuzz '^FuzzParseAddress$$' -fuzztime $(FUZZTIME) ./controlplane/placement/
	$(GO) test -run '^$$' -fuzz '^FuzzLookup$$' -fuzztime $(FUZZTIME) ./controlplane/placement/
	$(GO) test -run '^$$' -fuzz '^FuzzAddressFromBody$$' -fuzztime $(FUZZTIME) ./router/internal/httpproxy/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./cell/internal/message/
	$(GO) test -run '^$$' -fuzz '^FuzzEdgeSession$$' -fuzztime $(FUZZTIME) ./router/internal/smtpedge/
	cd third_party/go-smtp && $(GO) test -run '^$$' -fuzz '^FuzzDataReader$$' -fuzztime $(FUZZTIME) .
	$(GO) test -run '^$$' -fuzz '^FuzzPreLogin$$' -fuzztime $(FUZZTIME) ./router/internal/imapproxy/
	$(GO) test -run '^$$' -fuzz '^FuzzCommands$$' -fuzztime $(FUZZTIME) ./cell/internal/imapd/
	$(GO) test -run '^$$' -fuzz '^FuzzSession$$' -fuzztime $(FUZZTIME) ./cell/internal/imapd/

tools: ## Install buf and the protoc plugins (pinned) into .dev/tools
	@mkdir -p $(TOOLS)
	@test -x $(TOOLS)/buf || GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@test -x $(TOOLS)/protoc-gen-go || GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@test -x $(TOOLS)/protoc-gen-connect-go || GOBIN=$(TOOLS) $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(PROTOC_GEN_CONNECT_GO_VERSION)

weed: ## Build SeaweedFS's weed (the blob store tests' S3 server) into .dev/tools, once (about 10 minutes on 2 cores)
	@GO=$(GO) ./scripts/weed.sh

generate: tools ## Regenerate protobuf and Connect code (committed)
	buf lint
	buf generate

checkgenerate: generate ## Fail if the committed generated code is not what generate makes
	@git diff --exit-code -- '*.pb.go' '*.connect.go' || (echo "generated code is stale: run make generate and commit"; exit 1)
	@test -z "$$(git ls-files --others --exclude-standard -- '*.pb.go' '*.connect.go')" || (echo "untracked generated files"; exit 1)

clean: ## Remove built binaries (keeps .dev data)
	rm -rf $(BIN)
