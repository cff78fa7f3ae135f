# Sourced by the scripts: installs missing system packages and pins the cargo target dir.
# Debian packages: libclang-dev (bindgen for librocksdb-sys), protobuf-compiler (protoc).

ensure_system_packages() {
    local missing=()
    for pkg in libclang-dev protobuf-compiler; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "error: need root or sudo to install: ${missing[*]}" >&2
            return 1
        fi
    fi
    echo "installing ${missing[*]}" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update </dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y libclang-dev protobuf-compiler </dev/null
}

# One fixed target dir outside the clone: later runs are incremental (RocksDB's C++ takes
# ~28 minutes to build cold on 2 cores). Never `cargo clean` it in CI.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/auditledger-target}"
export PROTOC="${PROTOC:-$(command -v protoc || echo /usr/bin/protoc)}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
