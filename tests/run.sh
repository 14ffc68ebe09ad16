#!/usr/bin/env bash
# The test command: runs every check this project has, on a fresh machine.
#
#   bash tests/run.sh
#
# - installs what the tests need when missing (gcc/g++ and the C library's
#   headers, valgrind, jansson for the demo host, python3 with aiosmtpd for
#   the SMTP server, rustfmt and clippy) with apt-get, pip and rustup;
# - cargo fmt --check, clippy with -D warnings, and rustdoc with -D warnings;
# - cargo test for the whole workspace: unit tests, the core's behaviour
#   tests, scenario tests through the worker, the SIGKILL crash test, the C
#   header staleness check, the C ABI test program (C99, -Werror -pedantic),
#   the header compiled as C++, the C programs under valgrind memcheck, and
#   the WebAssembly plugins (built here from plugins/ for wasm32-wasip2) run
#   by the module's wasmtime host.
set -euo pipefail
cd "$(dirname "$0")/.."

# A run from scratch gains nothing from incremental compilation, whose caches
# took 2.1 GB of the 9.9 GB target directory; set CARGO_INCREMENTAL=1 to keep
# them between runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

source tests/packages.sh
mapfile -t need_apt < <(c_toolchain_packages)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
apt_install "${need_apt[@]}"
# The SMTP tests' server: pip for the python3 on PATH; where that Python is
# Debian's own (externally managed), the user's site, then Debian's package.
if ! python3 -c "import aiosmtpd" 2>/dev/null; then
    python3 -m pip install --quiet aiosmtpd 2>/dev/null ||
        python3 -m pip install --quiet --user --break-system-packages aiosmtpd 2>/dev/null ||
        apt_install python3-aiosmtpd
    python3 -c "import aiosmtpd"
fi
for component in clippy rustfmt; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" ||
        rustup component add "$component"
done

echo "== plugins (wasm32-wasip2)"
# Adds the wasm32-wasip2 target with rustup when missing, builds every plugin
# into plugins/dist, and runs the guest crates' own tests natively.
bash plugins/build.sh
cargo test --quiet --manifest-path plugins/Cargo.toml --workspace

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc (warnings are errors: broken or private links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
echo "== cargo test"
cargo test --workspace
