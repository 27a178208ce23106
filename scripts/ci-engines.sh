#!/usr/bin/env bash
# Start the container engines the docker/podman backend tests need, and build the test
# image offline (no registry is ever contacted). Idempotent: safe to run again.
#
#   scripts/ci-engines.sh            # start dockerd (if needed), build images
#   INSTALL=1 scripts/ci-engines.sh  # first apt-get install the engines (Debian, as root)
#
# Environment: IMAGE (default mechasandbox-test:busybox), DOCKERD_CONFIG (our daemon
# config file, default /etc/mechasandbox/dockerd.json), DOCKERD_LOG (/tmp/dockerd.log).
set -euo pipefail

IMAGE="${IMAGE:-mechasandbox-test:busybox}"
DOCKERD_CONFIG="${DOCKERD_CONFIG:-/etc/mechasandbox/dockerd.json}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"

log() { printf 'ci-engines: %s\n' "$*" >&2; }

if [[ "${INSTALL:-0}" == 1 ]]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io podman runsc busybox-static
fi

# The rootfs: a static busybox, its applets as symlinks, a passwd for `id`, and the host's
# socat with its libraries (the allowlist forwarder).
build_rootfs() {
    local rootfs="$1"
    "$HERE/src/mechasandbox/images/busybox-rootfs.sh" "$rootfs"
}

write_dockerd_config() {
    mkdir -p "$(dirname "$DOCKERD_CONFIG")"
    # No bridge and no iptables: containers only ever get --network none. runsc is
    # registered with its own --network=none (gVisor otherwise refuses to start here) and
    # --oci-seccomp (without it gVisor ignores the container's seccomp profile).
    cat >"$DOCKERD_CONFIG" <<'JSON'
{
  "bridge": "none",
  "iptables": false,
  "ip6tables": false,
  "runtimes": {
    "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--oci-seccomp"]}
  }
}
JSON
    if ! command -v runsc >/dev/null; then
        # Without the binary the runtime entry would make dockerd refuse to start.
        printf '{"bridge": "none", "iptables": false, "ip6tables": false}\n' >"$DOCKERD_CONFIG"
    fi
}

start_dockerd() {
    if docker info >/dev/null 2>&1; then
        log "docker engine already reachable"
        # A daemon started from our config by an earlier version of this script: register
        # runsc as it is now (dockerd reloads its runtimes on SIGHUP, containers keep going).
        if [[ -f "$DOCKERD_CONFIG" ]] && ! grep -q -- '--oci-seccomp' "$DOCKERD_CONFIG"; then
            write_dockerd_config
            pid="$(pgrep -x dockerd | head -n 1 || true)"
            [[ -n "$pid" ]] && kill -HUP "$pid" && log "dockerd: runtimes reloaded" && sleep 1
        fi
        return
    fi
    command -v dockerd >/dev/null || { log "dockerd not installed"; return 1; }
    write_dockerd_config
    log "starting dockerd (log: $DOCKERD_LOG)"
    nohup dockerd --config-file "$DOCKERD_CONFIG" >"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && { log "dockerd is up"; return; }
        sleep 1
    done
    log "dockerd did not come up; see $DOCKERD_LOG"
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    return 1
}

import_image() {
    local engine="$1" rootfs="$2"
    if "$engine" image inspect "$IMAGE" >/dev/null 2>&1; then
        # Images imported before the rootfs carried socat (the allowlist forwarder), or
        # with a / only root may enter, are imported again; the check runs the image
        # offline as a non-root uid, as the backends may.
        # (Explicit ulimits: rootful podman otherwise raises them beyond what it may set.)
        if "$engine" run --rm --pull never --network none --ulimit nofile=1024:1024 \
            --ulimit nproc=512:512 --user 65534:65534 --entrypoint /bin/sh "$IMAGE" \
            -c 'command -v socat' >/dev/null 2>&1; then
            log "$engine: $IMAGE already present"
            return
        fi
        log "$engine: $IMAGE lacks socat or is closed to non-root users: importing it again"
    else
        log "$engine: importing $IMAGE"
    fi
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -c . |
        "$engine" import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - "$IMAGE" >/dev/null
}

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
build_rootfs "$rootfs"

status=0
if command -v docker >/dev/null; then
    start_dockerd && import_image docker "$rootfs" || status=1
    if docker run --rm --pull never --network none --runtime runsc "$IMAGE" true >/dev/null 2>&1; then
        log "docker: gVisor (runsc) works"
    else
        log "docker: gVisor (runsc) unavailable on this host"
    fi
else
    log "docker CLI not installed: skipping"
fi
if command -v podman >/dev/null; then
    import_image podman "$rootfs" || status=1
else
    log "podman not installed: skipping"
fi
exit "$status"
