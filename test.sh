#!/usr/bin/env bash
# The test command: installs what the tests need that Rust does not bring, then checks the
# formatting and runs every test. Needs only the Rust toolchain (rustfmt included) and, for
# the one missing piece, apt (Debian/Ubuntu) as root or through sudo.
#   ./test.sh                 everything CI runs
#   ./test.sh --test report_export   extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")"

# Headless Chromium renders the HTML report in tests/report_export.rs (Debian package). The
# test fails, not skips, without it, so it is installed here rather than assumed.
# Found as tests/report_export.rs finds it: $COFT_CHROMIUM, else these names on PATH.
have_chromium() {
    [ -n "${COFT_CHROMIUM:-}" ] && return 0
    for name in chromium chromium-browser google-chrome chrome; do
        command -v "$name" >/dev/null 2>&1 && return 0
    done
    return 1
}
if ! have_chromium; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO="sudo"
        else
            echo "test.sh: chromium is missing and there is no root or sudo to install it;" \
                "install the chromium package (or set COFT_CHROMIUM=/path/to/chrome) and rerun" >&2
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: chromium is missing and this is not an apt system; install Chromium" \
            "(or set COFT_CHROMIUM=/path/to/chrome) and rerun" >&2
        exit 1
    fi
    echo "test.sh: installing chromium (headless, for the report test)" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi

# rustfmt is a rustup component that a minimal toolchain profile leaves out.
if ! cargo fmt --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt
fi

cargo --version
rustc --version
# Formatting first: it is instant and catches the commonest slip.
cargo fmt --all -- --check
# Real-data tests read ../shared/data when present.
cargo test --release --locked "$@"
