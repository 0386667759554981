# Shared by the setup scripts: checks that say what to do.

need_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found. Install Rust 1.85 or newer (https://rustup.rs), then re-run." >&2
        exit 1
    fi
}

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $1 needs root (the kernel's process events require CAP_NET_ADMIN)." >&2
        echo "       Re-run with sudo." >&2
        exit 1
    fi
}

# What building and testing need from Debian: protoc for the etcd client's build,
# etcd and etcdctl for the control-plane tests, openssl for their TLS certificates.
TEST_PACKAGES="protobuf-compiler etcd-server etcd-client openssl"

# Installs the Debian packages given that are not installed yet.
ensure_packages() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ] && [ "$(id -u)" -ne 0 ]; then
        echo "error: missing Debian packages:$missing. Install them (sudo apt-get install$missing) or run as root." >&2
        exit 1
    fi
    if [ -n "$missing" ]; then
        echo "installing Debian packages:$missing" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    fi
}
