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
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
    [[ -e "$rootfs/bin/$applet" ]] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
