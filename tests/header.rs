//! The committed C header `include/crm_module.h` is exactly what cbindgen
//! generates from `ffi/src/lib.rs` with `ffi/cbindgen.toml`.
//!
//! Refresh it with:
//!
//! ```sh
//! CRM_UPDATE_HEADER=1 cargo test -p crm-integration-tests --test header
//! ```

use crm_integration_tests::workspace_root;

const REFRESH: &str = "CRM_UPDATE_HEADER=1 cargo test -p crm-integration-tests --test header";

fn generate() -> Vec<u8> {
    let root = workspace_root();
    let ffi = root.join("ffi");
    let config =
        cbindgen::Config::from_file(ffi.join("cbindgen.toml")).expect("read ffi/cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(&ffi)
        .with_config(config)
        .generate()
        .expect("cbindgen failed to generate the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    out
}

#[test]
fn header_is_up_to_date() {
    let path = workspace_root().join("include").join("crm_module.h");
    let fresh = generate();
    if std::env::var("CRM_UPDATE_HEADER").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    if committed != fresh {
        let committed = String::from_utf8_lossy(&committed);
        let fresh_text = String::from_utf8_lossy(&fresh);
        let first_diff = committed
            .lines()
            .zip(fresh_text.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or_else(|| committed.lines().count().min(fresh_text.lines().count()) + 1);
        panic!(
            "include/crm_module.h is stale (or missing): it differs from what cbindgen generates \
             from ffi/src/lib.rs, first at line {first_diff}.\nRefresh it with:\n    {REFRESH}"
        );
    }
}

#[test]
fn header_declares_the_whole_api() {
    let text = String::from_utf8(generate()).unwrap();
    for needle in [
        "#ifndef CRM_MODULE_H",
        "extern \"C\" {",
        "typedef struct crm_module crm_module;",
        "typedef int crm_status;",
        "#define CRM_OK 0",
        "#define CRM_ERR_NULL 1",
        "#define CRM_ERR_UTF8 10",
        "#define CRM_HOST_CALLBACKS_VERSION 1",
        "typedef struct crm_host_callbacks {",
        "crm_status crm_open(",
        "void crm_close(",
        "crm_status crm_push_event(",
        "crm_status crm_push_events(",
        "crm_status crm_execute(",
        "crm_status crm_query_view(",
        "crm_status crm_clock_advance(",
        "crm_status crm_clock_now(",
        "crm_status crm_wait_idle(",
        "crm_status crm_set_host_callbacks(",
        "void crm_string_free(",
        "int crm_last_error_code(void);",
        "const char *crm_last_error_message(void);",
        "const char *crm_version(void);",
        "uint32_t crm_version_number(void);",
        "THREAD SAFETY",
        "crm_string_free()",
    ] {
        assert!(
            text.contains(needle),
            "the generated header lacks {needle:?}"
        );
    }
    // No Rust-only types leak into the header.
    for bad in ["Option<", "Arc<", "RwLock", "CallbackHost", "LastError"] {
        assert!(!text.contains(bad), "the generated header mentions {bad:?}");
    }
}
