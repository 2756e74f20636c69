#!/usr/bin/env bash
# Installs everything the private-node harness needs, idempotently.
#
# - bookworm packages through the system's apt: runc, busybox-static, protobuf-compiler,
#   iproute2, debian-archive-keyring, libseccomp-dev, systemd (only when missing). protoc
#   is for the harness alone: its CRI client crate (k8s-cri) generates its code with it; the
#   plugin builds without. libseccomp-dev is for `make static` alone (libseccomp.a, linked
#   into the image's static binary); the default build needs only cargo and loads
#   libseccomp.so.2 (libseccomp2, which runc depends on too) at run time. systemd is for
#   `systemd-analyze verify` of the packaged unit: installing it does not start it, nor need
#   it as PID 1;
# - containerd 1.7 (trixie), containerd 2.1 (sid) and the CNI plugins (sid) as .deb files,
#   fetched through a private apt configuration and unpacked with `dpkg -x` into the cache
#   (the system's packages are never touched);
# - the static test binary and the three test images (busybox, pause, distroless) as
#   OCI-layout tars.
#
# Everything lands in $NRI_HARNESS_CACHE (default: .cache/harness at the repository root).
# A second run downloads nothing. Set DEBIAN_MIRROR to override the archive URI that is
# otherwise taken from the host's apt configuration.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${NRI_HARNESS_CACHE:-$repo/.cache/harness}"
mkdir -p "$cache"

# Pinned versions (upstream part; the Debian revision is whatever the suite carries).
CONTAINERD17_SUITE=trixie CONTAINERD17_PIN=1.7.24
CONTAINERD21_SUITE=sid CONTAINERD21_PIN=2.1.9
CNI_SUITE=sid CNI_PIN=1.9.1

say() { printf '[harness-setup] %s\n' "$*" >&2; }
loud() {
    printf '\n[harness-setup] !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
    printf '[harness-setup] !!! %s\n' "$@" >&2
    printf '[harness-setup] !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}

if [ "$(id -u)" != 0 ]; then
    say "must run as root (apt-get install, containerd, network set-up)"
    exit 1
fi

# Serialise concurrent runs (several test binaries may call this at once).
exec 9>"$cache/.setup.lock"
flock 9

# ---------------------------------------------------------------- system packages
system_pkgs=(runc busybox-static protobuf-compiler iproute2 debian-archive-keyring libseccomp-dev systemd)
missing=()
for p in "${system_pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} from the system's apt sources (first time only)..."
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# ---------------------------------------------------------------- private apt
mirror_from_host() {
    local f uri suites
    # deb822 files: a stanza whose Suites has bookworm (not bookworm-security).
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            BEGIN { RS=""; FS="\n" }
            {
                uri=""; ok=0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri=a[2] }
                    if ($i ~ /^Suites:/) { if ($i ~ /[ \t]bookworm([ \t]|$)/) ok=1 }
                }
                if (ok && uri != "") { print uri; exit }
            }' "$f"
    done | head -n1
    # one-line format.
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i !~ /\]$/) { u=$i; s=$(i+1); break }
                         if (s=="bookworm") { print u; exit } }' "$f"
    done | head -n1
}

apt_dir="$cache/apt"
private_apt() {
    apt-get -q \
        -o Dir::Etc::SourceList="$apt_dir/sources.list" \
        -o Dir::Etc::SourceParts="$apt_dir/sources.list.d" \
        -o Dir::Etc::Preferences="$apt_dir/preferences" \
        -o Dir::Etc::PreferencesParts="$apt_dir/preferences.d" \
        -o Dir::State::Lists="$apt_dir/lists" \
        -o Dir::Cache="$apt_dir/cache" \
        -o APT::Default-Release= \
        -o APT::Sandbox::User=root \
        "$@"
}
private_apt_cache() {
    apt-cache \
        -o Dir::Etc::SourceList="$apt_dir/sources.list" \
        -o Dir::Etc::SourceParts="$apt_dir/sources.list.d" \
        -o Dir::Etc::Preferences="$apt_dir/preferences" \
        -o Dir::Etc::PreferencesParts="$apt_dir/preferences.d" \
        -o Dir::State::Lists="$apt_dir/lists" \
        -o Dir::Cache="$apt_dir/cache" \
        "$@"
}
apt_ready=0
prepare_private_apt() {
    [ "$apt_ready" = 1 ] && return 0
    local mirror="${DEBIAN_MIRROR:-}"
    if [ -z "$mirror" ]; then
        mirror="$(mirror_from_host | head -n1)"
    fi
    if [ -z "$mirror" ]; then
        say "cannot find the Debian archive URI in the host's apt configuration; set DEBIAN_MIRROR"
        exit 1
    fi
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" \
        "$apt_dir/sources.list.d" "$apt_dir/preferences.d"
    : >"$apt_dir/preferences"
    cat >"$apt_dir/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main
SRC
    say "refreshing the private package lists for trixie and sid (first time only, ~1 min)..."
    private_apt update >/dev/null
    apt_ready=1
}

# fetch_unpack NAME PACKAGE SUITE PIN  -> unpacks into $cache/NAME, records the version
fetch_unpack() {
    local name="$1" pkg="$2" suite="$3" pin="$4"
    local dest="$cache/$name" stamp="$cache/$name.version"
    if [ -f "$stamp" ] && [ -d "$dest" ]; then
        return 0
    fi
    prepare_private_apt
    local versions chosen=""
    versions="$(private_apt_cache madison "$pkg" | awk -F'|' -v s="$suite" '$3 ~ ("/" s "[/ ]") || $3 ~ (" " s "/") {gsub(/ /,"",$2); print $2}')"
    for v in $versions; do
        case "$v" in
            "$pin"|"$pin"[~+-]*|*:"$pin"|*:"$pin"[~+-]*) chosen="$v"; break ;;
        esac
    done
    if [ -z "$chosen" ]; then
        chosen="$(printf '%s\n' $versions | head -n1)"
        if [ -z "$chosen" ]; then
            say "package $pkg is not in $suite"
            exit 1
        fi
        loud "pinned $pkg $pin has left $suite" "TESTING $pkg $chosen FROM $suite INSTEAD"
    fi
    local debs="$cache/debs"
    mkdir -p "$debs"
    local deb
    deb="$(ls "$debs/${pkg}_${chosen#*:}_"*.deb 2>/dev/null | head -n1 || true)"
    if [ -z "$deb" ]; then
        say "downloading $pkg $chosen ($suite)..."
        (cd "$debs" && private_apt download "$pkg=$chosen" >/dev/null)
        deb="$(ls "$debs/${pkg}_${chosen#*:}_"*.deb | head -n1)"
    fi
    rm -rf "$dest.tmp"
    dpkg -x "$deb" "$dest.tmp"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    printf '%s\n' "$chosen" >"$stamp"
    say "$pkg $chosen unpacked"
}

fetch_unpack containerd-1.7 containerd "$CONTAINERD17_SUITE" "$CONTAINERD17_PIN"
fetch_unpack containerd-2.1 containerd "$CONTAINERD21_SUITE" "$CONTAINERD21_PIN"
fetch_unpack cni containernetworking-plugins "$CNI_SUITE" "$CNI_PIN"

# ---------------------------------------------------------------- test binary and images
"$here/build-images.sh" "$cache"

for n in containerd-1.7 containerd-2.1 cni; do
    say "$n: $(cat "$cache/$n.version")"
done
say "ready: $cache"
