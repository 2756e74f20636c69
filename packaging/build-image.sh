#!/usr/bin/env bash
# Packs the static plugin binary into a single-layer OCI image archive (OCI image layout in a
# tar) that `ctr images import` and `skopeo copy oci-archive:...` accept.
#
# Usage: build-image.sh BINARY OUTPUT.tar IMAGE_NAME
#   BINARY      a statically linked nri-lifecycle (see `make image`)
#   OUTPUT.tar  the archive to write
#   IMAGE_NAME  full reference, e.g. docker.io/library/nri-lifecycle:0.1.0 (what containerd
#               makes of `nri-lifecycle:0.1.0` in a pod spec)
#
# The image holds one file, /nri-lifecycle, which is its entrypoint. The build is
# reproducible: fixed mtimes, owners and entry order, so the same binary always gives the
# same digests.
set -euo pipefail

bin="$1"
out="$2"
ref="$3"

if ! file -b "$bin" | grep -q 'statically linked\|static-pie linked'; then
    echo "build-image.sh: $bin is not statically linked: $(file -b "$bin")" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
work="$(mktemp -d "${out}.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/layout/blobs/sha256"
install -m 0755 "$bin" "$work/rootfs/nri-lifecycle"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
tarc() { tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu "$@"; }
# blob FILE: moves FILE into the blob store, prints "DIGEST SIZE".
blob() {
    local d s
    d="$(sha "$1")"
    s="$(size "$1")"
    mv "$1" "$work/layout/blobs/sha256/$d"
    printf '%s %s\n' "$d" "$s"
}

tarc -C "$work/rootfs" -cf "$work/layer.tar" nri-lifecycle
read -r ld ls < <(blob "$work/layer.tar")

version="${ref##*:}"
printf '%s' "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Entrypoint\":[\"/nri-lifecycle\"],\"Cmd\":[\"run\"],\"Env\":[\"PATH=/\"],\"Labels\":{\"org.opencontainers.image.title\":\"nri-lifecycle\",\"org.opencontainers.image.version\":\"$version\"}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$ld\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"packaging/build-image.sh\"}]}" \
    >"$work/config.json"
read -r cd cs < <(blob "$work/config.json")

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cd\",\"size\":$cs},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$ld\",\"size\":$ls}]}" \
    >"$work/manifest.json"
read -r md ms < <(blob "$work/manifest.json")

printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
# io.containerd.image.name: the name `ctr images import` gives the image;
# org.opencontainers.image.ref.name: the tag other OCI tools (skopeo, podman) look up.
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$md\",\"size\":$ms,\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$ref\",\"org.opencontainers.image.ref.name\":\"$version\"}}]}" \
    >"$work/layout/index.json"

tarc -C "$work/layout" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
printf '%s\n' "$ref" >"${out%.tar}.ref"
echo "$out: $ref (manifest sha256:$md)"
