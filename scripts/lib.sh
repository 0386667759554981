# Shared by the setup scripts: checks that say what to do.

# cargo-installed tools (tansu) live here.
PATH="$HOME/.cargo/bin:$PATH"
export PATH

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

# What building needs from Debian: protoc and the well-known .proto files
# (google/protobuf/descriptor.proto, in libprotobuf-dev, which --no-install-recommends
# leaves out) for the etcd client, cmake and the curl, TLS and zlib headers for
# librdkafka (built from its vendored sources).
# clang compiles the process plugin's eBPF program; libelf is what libbpf (linked into
# the plugin) reads BPF objects with.
BUILD_PACKAGES="protobuf-compiler libprotobuf-dev cmake libcurl4-openssl-dev libssl-dev zlib1g-dev pkg-config clang libelf-dev make"
# And testing: etcd and etcdctl for the control-plane tests, openssl for their TLS
# certificates, postgresql for hids-store's shared backend (its tests start a throwaway
# cluster of their own), prometheus (with promtool) for the test that runs every query
# of the Grafana dashboard against a real Prometheus scraping the server and etcd.
# The inventory plugin's tests: rpm (with rpmbuild) writes real rpm databases to read (gpg
# imports the key rpm lists as a gpg-pubkey pseudo-package),
# db5.3-util writes a Berkeley DB one, a JDK runs a real Java process holding a jar;
# the version-ordering tests compare with librpm (python3-rpm) and dpkg (libdpkg-perl).
# chromium: the web console's tests load every page in a real (headless) browser.
# iproute2: the network plugin's tests compare with ss and make namespaces with ip.
# systemd: systemd-analyze verifies the packaged units.
TEST_PACKAGES="$BUILD_PACKAGES etcd-server etcd-client openssl postgresql prometheus rpm db5.3-util gpg openjdk-17-jdk-headless python3-rpm libdpkg-perl chromium iproute2 systemd"

# tansu, the Kafka-API broker of the pipeline tests (crates.io). It must be built with
# storage features, or it silently discards data; the build takes 20-25 minutes on two
# cores, so it is done only when tansu is missing.
ensure_tansu() {
    if command -v tansu >/dev/null 2>&1; then
        return
    fi
    echo "installing tansu (Kafka-API broker for the tests; 20-25 minutes, once)" >&2
    cargo install tansu --locked --features dynostore,libsql
}

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
