#!/usr/bin/env bash
# A short tour on the best local backend: doctor, a write in a scratch workspace, a read of
# a secret outside it (refused, or an honest refusal to run), and a runaway command cut off.
set -u
scratch=$(mktemp -d /tmp/mechasandbox-demo.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/workspace" "$scratch/outside"
echo "demo-secret-$RANDOM$RANDOM" > "$scratch/outside/secret.txt"
cd "$scratch/workspace" || exit 1

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "$2"; }

step "what each backend enforces here" "mechasandbox doctor"
mechasandbox doctor

step "write inside the workspace" "mechasandbox run -- sh -c 'echo hello > note.txt && cat note.txt'"
mechasandbox run -- sh -c 'echo hello > note.txt && cat note.txt'
echo "exit status: $?; on the host: $(cat note.txt 2>/dev/null || echo '(no file)')"

step "read a secret outside the workspace" "mechasandbox run --json -- cat $scratch/outside/secret.txt"
out=$(mechasandbox run --json -- cat "$scratch/outside/secret.txt")
status=$?
echo "$out"
if grep -q "demo-secret" <<<"$out"; then
  echo ">> the secret was readable: this host has no backend that confines reads (see doctor)"
else
  echo ">> refused (exit status $status): the secret did not reach the command's output"
fi

step "a runaway command is cut off" "mechasandbox run --best-effort --timeout 1 -- sh -c 'while :; do :; done'"
start=$(date +%s.%N)
mechasandbox run --best-effort --timeout 1 -- sh -c 'while :; do :; done'
status=$?
echo "exit status: $status (124 = timeout) after $(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo '~1') s"
