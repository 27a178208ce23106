#!/usr/bin/env bash
# The offline recipe of the default image: a root filesystem with a static busybox.
# No registry needed. Usage: busybox-rootfs.sh DIR, then e.g.
#   tar -C DIR -c . | docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - mechasandbox/sandbox:latest
set -euo pipefail
rootfs="${1:?usage: $0 ROOTFS_DIR}"
busybox="${BUSYBOX:-/bin/busybox}"
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || {
    echo "$busybox is not statically linked (install busybox-static)" >&2
    exit 1
}
mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,usr/bin,usr/local/bin}
# The image's / gets this directory's mode: one made by `mktemp -d` (0700) would leave a
# command that runs as a non-root uid (the caller's, `--user`) unable to reach anything.
chmod 755 "$rootfs"
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
    [[ -e "$rootfs/bin/$applet" ]] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

# socat, the forwarder the allowlist bridge starts inside the container (loopback:3128 ->
# the run's proxy socket): the host's binary with every shared library it loads and the
# dynamic loader, each at the path it has on the host. SOCAT= to use another binary; an
# empty SOCAT= leaves it out (such an image runs allowlist policies with no network).
socat="${SOCAT-$(command -v socat || true)}"
if [[ -n "$socat" ]]; then
    mkdir -p "$rootfs/usr/bin"
    cp -L "$socat" "$rootfs/usr/bin/socat"
    for lib in $(ldd "$socat" | grep -o '/[^ ]*'); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
    chroot "$rootfs" /usr/bin/socat -V >/dev/null 2>&1 || {
        echo "socat copied into $rootfs does not run there" >&2
        exit 1
    }
else
    echo "socat not found: the image will have no allowlist forwarder" >&2
fi
