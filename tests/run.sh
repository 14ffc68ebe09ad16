#!/usr/bin/env bash
# The test command: runs every check this project has, on a fresh machine.
#
#   bash tests/run.sh
#
# - installs what the tests need when missing (gcc/g++, valgrind, jansson for
#   the demo host) with apt-get;
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

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
[ -f /usr/include/jansson.h ] || need_apt+=(libjansson-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing ${need_apt[*]} ..."
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c "import aiosmtpd" 2>/dev/null || pip install --quiet aiosmtpd
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

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
