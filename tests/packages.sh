# Sourced by tests/run.sh and examples/run-demo.sh: installs what a fresh
# Debian machine lacks, without prompts.

# apt_install PACKAGE...: installs Debian packages without prompts or
# recommended extras, as root or through sudo: `sudo -n` without a terminal
# (fails at once rather than waiting for a password nobody can type).
apt_install() {
    [ $# -gt 0 ] || return 0
    echo "installing $* ..."
    local sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then
        if [ -t 0 ]; then sudo_cmd=(sudo); else sudo_cmd=(sudo -n); fi
    fi
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# c_toolchain_packages: the packages a C99 build against the header and
# jansson needs (the compiler, the C library's headers, jansson's).
c_toolchain_packages() {
    command -v cc >/dev/null 2>&1 || echo gcc
    [ -f /usr/include/stdio.h ] || echo libc6-dev
    [ -f /usr/include/jansson.h ] || echo libjansson-dev
}
