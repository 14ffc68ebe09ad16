//! Shared helpers of the integration tests: where the workspace and the build
//! artifacts are, building the C ABI library, compiling and running C
//! programs against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory of the current profile's artifacts (`target/debug`), found
/// from the running test executable (`target/debug/deps/<test>-<hash>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("exe dir");
    if deps.file_name().is_some_and(|n| n == "deps") {
        return deps.parent().expect("profile dir").to_path_buf();
    }
    // Fallback: CARGO_TARGET_DIR or target/, debug profile.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug")
}

/// The profile name of `profile_dir()` (`debug` or `release`).
fn profile_name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string()
}

/// The file name of the shared library on this platform.
pub fn cdylib_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libcrm.dylib"
    } else {
        "libcrm.so"
    }
}

/// Builds the C ABI shared library (once per test process) and returns its
/// directory.
///
/// Cargo builds crm-ffi for the tests only as an rlib: `target/<profile>/
/// libcrm.so` may be missing or stale. So this runs
/// `cargo build -p crm-ffi --lib` for the same profile and target directory
/// (a no-op when it is up to date).
pub fn ensure_ffi_built() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_ffi).clone()
}

fn build_ffi() -> PathBuf {
    let dir = profile_dir();
    let lib = dir.join(cdylib_name());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "crm-ffi", "--lib"]);
    if profile_name(&dir) == "release" {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    let out = cmd.output().expect("run cargo build -p crm-ffi");
    assert!(
        out.status.success(),
        "cargo build -p crm-ffi failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lib.exists(), "{} was not built", lib.display());
    dir
}

/// Where compiled test programs go (`target/<profile>/c-tests`).
pub fn c_build_dir() -> PathBuf {
    let dir = profile_dir().join("c-tests");
    std::fs::create_dir_all(&dir).expect("create the C build dir");
    dir
}

/// The strict C flags every C test program is compiled with.
pub const C_FLAGS: &[&str] = &[
    "-std=c99",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-g",
    "-O1",
];

/// The C compiler: `$CC` or `cc`.
pub fn c_compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// The C++ compiler: `$CXX` or `c++`.
pub fn cxx_compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

/// Output of a finished command, as text, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Compiles `source` (relative to the workspace root) with the strict C
/// flags, `-pthread`, the `include/` directory and the C ABI library (linked
/// with an rpath), into `c_build_dir()/<name>`. Panics with the compiler's
/// output on failure.
pub fn compile_c_against_ffi(source: &str, name: &str) -> PathBuf {
    compile_c_with_libs(source, name, &[])
}

/// Like [`compile_c_against_ffi`], linking extra system libraries (`-l<lib>`).
pub fn compile_c_with_libs(source: &str, name: &str, libs: &[&str]) -> PathBuf {
    let lib_dir = ensure_ffi_built();
    let root = workspace_root();
    let exe = c_build_dir().join(name);
    let out = Command::new(c_compiler())
        .args(C_FLAGS)
        .arg("-pthread")
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join(source))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-lcrm")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(libs.iter().map(|l| format!("-l{l}")))
        .arg("-pthread")
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "compiling {source} failed:\n{}",
        describe(&out)
    );
    exe
}

/// Checks that a C++ source including the header compiles
/// (`-std=c++11 -Wall -Wextra -Werror -pedantic -fsyntax-only`).
pub fn check_cxx_syntax(source: &str) {
    let root = workspace_root();
    let out = Command::new(cxx_compiler())
        .args([
            "-std=c++11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
        ])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join(source))
        .output()
        .expect("run the C++ compiler");
    assert!(
        out.status.success(),
        "compiling {source} as C++ failed:\n{}",
        describe(&out)
    );
}

/// The last non-empty line of a program's stdout.
pub fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// Parses the `N passed, M failed` summary line the C tests print last.
pub fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let (p, f) = line.split_once(" passed, ")?;
    let f = f.strip_suffix(" failed")?;
    Some((p.trim().parse().ok()?, f.trim().parse().ok()?))
}

/// Whether an executable is on `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
