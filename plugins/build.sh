#!/usr/bin/env bash
# Builds every plugin in this workspace as a WebAssembly component for
# wasm32-wasip2 and copies each to dist/<crate_name>.wasm, the crate name
# with underscores as cargo names the artifact: lead_score.wasm,
# http_sms.wasm, test_steps.wasm, future_contract.wasm, trivial_step.wasm.
#
# Works from any directory; idempotent (an up-to-date dist/ file is left
# untouched) and fast when nothing changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2
target_dir="$here/target"
dist="$here/dist"

# The plugin packages. Each is built by its own cargo invocation: one build of
# several members would unify the SDK's `step` and `sender` features and
# compile both worlds' bindings into every plugin (see Cargo.toml).
plugins=(lead-score http-sms test-steps future-contract trivial-step)

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
fi

# testing/future-contract builds against a copy of the contract one major
# version ahead; refresh the copy when the contract changes.
contract="$here/wit/crm-plugin.wit"
future="$here/testing/future-contract/wit/crm-plugin.wit"
version_line="$(grep -E '^package crm:plugin@[0-9]+\.[0-9]+\.[0-9]+;$' "$contract")" || {
    echo "build.sh: no 'package crm:plugin@X.Y.Z;' line in $contract" >&2
    exit 1
}
major="${version_line#package crm:plugin@}"
major="${major%%.*}"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
sed -E "s/^package crm:plugin@[0-9]+\.[0-9]+\.[0-9]+;$/package crm:plugin@$((major + 1)).0.0;/" \
    "$contract" >"$tmp"
if ! cmp -s "$tmp" "$future"; then
    mkdir -p "$(dirname "$future")"
    cp "$tmp" "$future"
    echo "build.sh: refreshed $future (crm:plugin@$((major + 1)).0.0)"
fi

mkdir -p "$dist"
component_magic="00 61 73 6d 0d 00 01 00"
for plugin in "${plugins[@]}"; do
    cargo build --quiet --release --target "$target" \
        --manifest-path "$here/Cargo.toml" --target-dir "$target_dir" -p "$plugin"
    name="${plugin//-/_}"
    built="$target_dir/$target/release/$name.wasm"
    magic="$(head -c 8 "$built" | od -An -tx1 | tr -s ' ' | sed 's/^ //; s/ $//')"
    if [[ "$magic" != "$component_magic" ]]; then
        echo "build.sh: $built is not a component (header: $magic)" >&2
        exit 1
    fi
    if ! cmp -s "$built" "$dist/$name.wasm"; then
        cp "$built" "$dist/$name.wasm"
    fi
    printf '%-24s %9d bytes\n' "dist/$name.wasm" "$(wc -c <"$dist/$name.wasm")"
done
