#!/usr/bin/env bash
# Builds the static test binary and the three local test images as OCI-layout tars:
#   busybox     Debian's busybox-static plus applet symlinks (Cmd: sh)
#   pause       the same layer, running `sleep` for ever (the sandbox image)
#   distroless  only /testapp, our static test binary: no shell, no sleep
# Usage: build-images.sh CACHE_DIR. Rebuilds only what changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="$1"
out="$cache/images"
mkdir -p "$out"
say() { printf '[harness-setup] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- testapp
src="$here/../testapp/main.rs"
app="$out/testapp"
if [ ! -x "$app" ] || [ "$src" -nt "$app" ]; then
    say "building the static test binary..."
    rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
        "$src" -o "$app.tmp"
    mv "$app.tmp" "$app"
fi

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# oci_image NAME REF ROOTFS_DIR CONFIG_JSON(process part)
oci_image() {
    local name="$1" ref="$2" rootfs="$3" proc="$4"
    local work="$out/$name.build"
    rm -rf "$work"
    mkdir -p "$work/blobs/sha256"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$rootfs" -cf "$work/layer.tar" .
    local ld ls
    ld="$(sha "$work/layer.tar")"
    ls="$(size "$work/layer.tar")"
    mv "$work/layer.tar" "$work/blobs/sha256/$ld"
    printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$proc" "$ld" >"$work/config.json"
    local cd cs
    cd="$(sha "$work/config.json")"
    cs="$(size "$work/config.json")"
    mv "$work/config.json" "$work/blobs/sha256/$cd"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$cd" "$cs" "$ld" "$ls" >"$work/manifest.json"
    local md ms
    md="$(sha "$work/manifest.json")"
    ms="$(size "$work/manifest.json")"
    mv "$work/manifest.json" "$work/blobs/sha256/$md"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$md" "$ms" "$ref" "${ref##*:}" >"$work/index.json"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$work" -cf "$out/$name.tar.tmp" oci-layout index.json blobs
    mv "$out/$name.tar.tmp" "$out/$name.tar"
    printf '%s\n' "$ref" >"$out/$name.ref"
    rm -rf "$work"
}

bb=/bin/busybox
stamp_inputs="$(sha "$bb") $(sha "$app") $(sha "$0")"
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp_inputs" ] \
    && [ -f "$out/busybox.tar" ] && [ -f "$out/pause.tar" ] && [ -f "$out/distroless.tar" ]; then
    exit 0
fi
say "building the test images (busybox, pause, distroless)..."

root="$out/rootfs-busybox"
rm -rf "$root"
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
for a in $("$bb" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
env='"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
oci_image busybox nri-harness.local/busybox:1 "$root" "{$env,\"Cmd\":[\"sh\"]}"
oci_image pause nri-harness.local/pause:1 "$root" "{$env,\"Entrypoint\":[\"/bin/sleep\",\"2147483647\"]}"
rm -rf "$root"

root="$out/rootfs-distroless"
rm -rf "$root"
mkdir -p "$root"
cp "$app" "$root/testapp"
oci_image distroless nri-harness.local/distroless:1 "$root" "{$env,\"Entrypoint\":[\"/testapp\"]}"
rm -rf "$root"

printf '%s\n' "$stamp_inputs" >"$out/.stamp"
