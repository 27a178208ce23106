#!/usr/bin/env bash
# Run the security and contract suites (`make test-security`) as an ordinary user, the way
# most people run mechasandbox: not root, no cgroup delegation, not in the docker group.
# Started by root (CI's .ci/run); creates the user when missing and works on a copy of this
# checkout in the user's home, with a venv from Debian's /usr/bin/python3. Idempotent.
#
#   scripts/ci-unprivileged.sh                    # as the user mechasandbox-ci
#   CI_USER=someone scripts/ci-unprivileged.sh
#
# What must work unprivileged (a missing backend fails, not skips): MECHASANDBOX_REQUIRE_
# BACKENDS, default "none process bubblewrap landlock". Left to the root run: docker (access
# to its socket is root's own) and podman (rootless, it has no memory/pids cgroup without
# delegation, so it refuses strict runs): MECHASANDBOX_SKIP_BACKENDS, default "docker podman".
set -euo pipefail

CI_USER="${CI_USER:-mechasandbox-ci}"
REQUIRE="${MECHASANDBOX_REQUIRE_BACKENDS:-none process bubblewrap landlock}"
SKIP="${MECHASANDBOX_SKIP_BACKENDS:-docker podman}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"

log() { printf 'ci-unprivileged: %s\n' "$*" >&2; }

[[ "$(id -u)" == 0 ]] || { log "must be started as root (it creates the user)"; exit 2; }

if ! id -u "$CI_USER" >/dev/null 2>&1; then
    log "creating user $CI_USER"
    useradd --create-home --shell /bin/bash --user-group "$CI_USER"
fi
home="$(getent passwd "$CI_USER" | cut -d: -f6)"
copy="$home/mechasandbox"

# The user's own login environment, nothing of root's (HOME, XDG_*, a venv on PATH).
as_user() {
    runuser -u "$CI_USER" -- env -i -C "$home" HOME="$home" USER="$CI_USER" \
        LOGNAME="$CI_USER" SHELL=/bin/bash PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@"
}

# A copy the user owns, of what the root run tests: tracked files as they are in the work
# tree plus untracked ones that are not ignored (no .venv, no built shim, no caches).
log "copying $HERE to $copy"
as_user rm -rf "$copy"
as_user mkdir -p "$copy"
git -C "$HERE" -c safe.directory="$HERE" ls-files -z --cached --others --exclude-standard |
    tar -C "$HERE" --null -T - --ignore-failed-read -c |
    as_user tar -x -C "$copy"

log "installing (venv from /usr/bin/python3, exec shim) as $CI_USER"
as_user make -C "$copy" --no-print-directory install PYTHON=/usr/bin/python3

log "make test-security as $(as_user id)"
as_user MECHASANDBOX_REQUIRE_BACKENDS="$REQUIRE" MECHASANDBOX_SKIP_BACKENDS="$SKIP" \
    MECHASANDBOX_REQUIRE_SHIM="${MECHASANDBOX_REQUIRE_SHIM:-1}" \
    make -C "$copy" --no-print-directory test-security
