#!/usr/bin/env bash
# The main job: builds the C ABI library and the demo C host, then runs a
# simulated practice (2,200 contacts; 30 days before go-live, then 90) through the module and prints
# the Automation list and each automation's Performance view.
#
#   bash examples/run-demo.sh [CONTACTS] [DAYS]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

source tests/packages.sh
mapfile -t need_apt < <(c_toolchain_packages)
apt_install "${need_apt[@]}"

cargo build --release -p crm-ffi
mkdir -p examples/build
lib="$root/target/release"
cc -std=c99 -O2 -Wall -Wextra -Werror -pedantic -pthread -Iinclude \
    examples/demo_host.c -o examples/build/demo_host \
    -L"$lib" -lcrm -ljansson -Wl,-rpath,"$lib"

db="examples/build/demo.db"
rm -f "$db" "$db-wal" "$db-shm"
time examples/build/demo_host "$db" "$@"
