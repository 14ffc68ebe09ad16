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
/// A run that selects only this package (`cargo test -p
/// crm-integration-tests`) builds crm-ffi only as an rlib: `target/<profile>/
/// libcrm.so` may be missing or stale. So this runs cargo again for the same
/// profile and target directory (a no-op when it is up to date), in a way
/// that reuses what the test run itself compiled:
///
/// - it selects the `header` test beside crm-ffi's library, so that cargo
///   resolves features as it did for `cargo test` (that test's
///   dev-dependency cbindgen turns on a feature of indexmap, which wasmtime
///   uses: resolved for crm-ffi alone, wasmtime and everything above it would
///   compile a second time, gigabytes of disk);
/// - it runs without the variables cargo set for this test process (see
///   [`nested_cargo_env`]).
pub fn ensure_ffi_built() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_ffi).clone()
}

fn build_ffi() -> PathBuf {
    let dir = profile_dir();
    let lib = dir.join(cdylib_name());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    nested_cargo_env(&mut cmd);
    cmd.current_dir(workspace_root()).args([
        "build",
        "-p",
        "crm-ffi",
        "-p",
        "crm-integration-tests",
        "--lib",
        "--test",
        "header",
    ]);
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

/// Removes from `cmd`'s environment the variables cargo sets for the crate it
/// runs (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, ...), so that a cargo
/// started by a test sees the environment the test run's own cargo saw.
/// Build scripts ask to rerun when such a variable changes (ring's does for
/// `CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME` and seven more): inherited from
/// this test process, they would recompile ring and everything above it.
pub fn nested_cargo_env(cmd: &mut Command) {
    const SET_BY_CARGO: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    const PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_BIN_EXE_", "CARGO_CFG_"];
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if SET_BY_CARGO.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(name);
        }
    }
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

/// valgrind with memcheck, failing (exit code 99) on any memory error and on
/// definite, indirect and possible leaks, with the project's suppressions
/// (`tests/c/valgrind.supp`: the phonenumber crate's process-wide statics,
/// its metadata database and its parser's expressions, and std's handle to
/// the host's main thread).
/// Panics with how to install valgrind when it is missing.
pub fn memcheck() -> Vec<String> {
    let Some(valgrind) = on_path("valgrind") else {
        panic!(
            "valgrind is not installed: the C programs must be checked under memcheck. \
             Install it (e.g. `apt-get install -y valgrind`) and run again."
        );
    };
    let suppressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/valgrind.supp");
    vec![
        valgrind.to_string_lossy().into_owned(),
        "--tool=memcheck".into(),
        "--error-exitcode=99".into(),
        "--leak-check=full".into(),
        "--errors-for-leak-kinds=definite,indirect,possible".into(),
        "--show-leak-kinds=definite,indirect,possible".into(),
        format!("--suppressions={}", suppressions.display()),
        // Deep enough for the suppressions to see the frame they name.
        "--num-callers=40".into(),
    ]
}

/// Whether an executable is on `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

// ---- a real SMTP server for the sender tests -------------------------------

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crm_module::messaging::smtp::{SmtpSecurity, SmtpSettings};
use serde_json::Value;
use std::io::Read as _;

/// python3 with the aiosmtpd package, or a clear failure saying how to get it.
pub fn python() -> PathBuf {
    let Some(python) = on_path("python3") else {
        panic!(
            "python3 is not on PATH: the SMTP tests need python3 with the aiosmtpd package \
             (tests/run.sh installs both)"
        );
    };
    let out = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the Python package aiosmtpd is missing: run `python3 -m pip install aiosmtpd` \
         (tests/run.sh does)\n{}",
        describe(&out)
    );
    python
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A Python test server from `tests/` on a free 127.0.0.1 port, writing what
/// it receives under `out`; killed when dropped (and it exits by itself when
/// its stdin closes, i.e. when this process dies).
///
/// Readiness is the server's own word: each script prints `listening on
/// 127.0.0.1:PORT` on stdout once it serves. Probing the port with a TCP
/// connect is not enough: `free_port` releases the port before the server
/// binds it, so a probe can reach another process that took it meanwhile
/// (and this server then fails to bind and exits); and aiosmtpd listens
/// before its `Controller.start()` has finished, which can still fail and
/// close the socket.
pub struct ScriptServer {
    child: Child,
    _stdin: Option<ChildStdin>,
    script: &'static str,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
}

/// How often `ScriptServer::start` tries a new port when the server could not
/// bind the one it was given (another process took it after `free_port`).
const SERVER_START_ATTEMPTS: usize = 3;

impl ScriptServer {
    /// Starts `python3 tests/<script> --port P --out DIR/<out> <extra>` and
    /// waits until it says it listens.
    pub fn start(python: PathBuf, script: &'static str, out: &str, extra: &[&str]) -> ScriptServer {
        let mut failures = Vec::new();
        for _ in 0..SERVER_START_ATTEMPTS {
            match Self::try_start(&python, script, out, extra) {
                Ok(server) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "tests/{script} did not start in {SERVER_START_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        );
    }

    /// One attempt on one free port: `Err` with the server's log when it
    /// exited before listening; a panic when it neither listens nor exits
    /// within 10 s.
    fn try_start(
        python: &Path,
        script: &'static str,
        out: &str,
        extra: &[&str],
    ) -> Result<ScriptServer, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server.log");
        let mut child = Command::new(python)
            .arg(workspace_root().join("tests").join(script))
            .arg("--port")
            .arg(port.to_string())
            .arg("--out")
            .arg(dir.path().join(out))
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tests/{script}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = ScriptServer {
            child,
            _stdin: stdin,
            script,
            port,
            dir,
        };
        let ready = watch_stdout(stdout, format!("listening on 127.0.0.1:{port}"));
        server.wait_until_listening(&ready)?;
        Ok(server)
    }

    /// The server's stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Files with extension `ext` under the output folder `out`, in name order.
    pub fn files(&self, out: &str, ext: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join(out))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == ext))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Waits at most 10 s for the ready line; `Err` if the server exited first.
    fn wait_until_listening(&mut self, ready: &Receiver<()>) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ready.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {}
                // stdout closed without the line: the server is exiting.
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait");
                    return Err(self.exited_early(status));
                }
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(self.exited_early(status));
            }
            assert!(
                Instant::now() < deadline,
                "tests/{} did not listen on 127.0.0.1:{} within 10 s:\n{}",
                self.script,
                self.port,
                self.log()
            );
        }
    }

    fn exited_early(&self, status: std::process::ExitStatus) -> String {
        format!(
            "tests/{} exited ({status}) before listening on port {}:\n{}",
            self.script,
            self.port,
            self.log()
        )
    }
}

/// Reads a child's stdout on a thread until it closes (so the child never
/// blocks on a full pipe); the receiver gets one message when `line` appears.
fn watch_stdout(stdout: ChildStdout, line: String) -> Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for read in BufReader::new(stdout).lines() {
            let Ok(text) = read else { break };
            if text.trim_end() == line {
                let _ = tx.send(());
            }
        }
    });
    rx
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `tests/smtp_server.py` (aiosmtpd).
pub struct SmtpServer {
    server: ScriptServer,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl SmtpServer {
    /// Starts `tests/smtp_server.py` on a free port; `auth` is `USER:PASS` to require a login.
    pub fn start(auth: Option<&str>) -> SmtpServer {
        let extra: Vec<&str> = auth.map(|a| vec!["--auth", a]).unwrap_or_default();
        SmtpServer::start_with(&extra)
    }

    /// Starts `tests/smtp_server.py` with these options (`--no-smtputf8`,
    /// `--auth USER:PASS`).
    pub fn start_with(extra: &[&str]) -> SmtpServer {
        let server = ScriptServer::start(python(), "smtp_server.py", "mail", extra);
        SmtpServer {
            port: server.port,
            server,
        }
    }

    /// See the test server's output.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// See the test server's output.
    pub fn settings(&self) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            timeout_seconds: 10,
        }
    }

    /// The JSON summaries of the messages received so far, in order.
    /// See the test server's output.
    pub fn received(&self) -> Vec<Value> {
        self.received_files("json")
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).expect("read summary");
                serde_json::from_str(&text).expect("summary is JSON")
            })
            .collect()
    }

    /// The raw messages received so far, in order.
    /// See the test server's output.
    pub fn received_raw(&self) -> Vec<Vec<u8>> {
        self.received_files("eml")
            .iter()
            .map(|path| {
                let mut bytes = Vec::new();
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .expect("read raw message");
                bytes
            })
            .collect()
    }

    /// See the test server's output.
    pub fn received_files(&self, ext: &str) -> Vec<PathBuf> {
        self.server.files("mail", ext)
    }
}

/// A running `tests/http_provider.py`: a real HTTP server on 127.0.0.1 that
/// plays an SMS provider (standard library Python only).
pub struct HttpProvider {
    server: ScriptServer,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl HttpProvider {
    /// Starts it on a free port.
    pub fn start() -> HttpProvider {
        let Some(python) = on_path("python3") else {
            panic!("python3 is not on PATH: the sender adapter tests need it");
        };
        let server = ScriptServer::start(python, "http_provider.py", "requests", &[]);
        HttpProvider {
            port: server.port,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests received so far, in order: method, path, headers (lower-case names), body.
    pub fn requests(&self) -> Vec<Value> {
        self.server
            .files("requests", "json")
            .iter()
            .map(|p| {
                serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("JSON")
            })
            .collect()
    }

    /// The server's stderr.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

// ---- the WebAssembly plugins built from plugins/ ----------------------------

/// Builds every plugin with `plugins/build.sh` (once per test process; it is
/// quick when up to date) and returns `plugins/dist`, where each component
/// is `<crate name with underscores>.wasm`.
pub fn plugins_dist() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let mut cmd = Command::new("bash");
            nested_cargo_env(&mut cmd);
            let out = cmd
                .arg(root.join("plugins/build.sh"))
                .output()
                .expect("run plugins/build.sh");
            assert!(
                out.status.success(),
                "plugins/build.sh failed:\n{}",
                describe(&out)
            );
            root.join("plugins/dist")
        })
        .clone()
}

/// The names of a database's own tables (not SQLite's), in order.
pub fn table_names(conn: &rusqlite::Connection) -> Vec<String> {
    conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The row of `channel` (`"email"` / `"sms"`) in a Performance view's
/// channel breakdown; panics, showing the view, when there is none.
pub fn channel_row<'a>(perf: &'a Value, channel: &str) -> &'a Value {
    perf["channel_breakdown"]
        .as_array()
        .and_then(|rows| rows.iter().find(|c| c["channel"]["id"] == channel))
        .unwrap_or_else(|| panic!("no {channel} row: {perf}"))
}
