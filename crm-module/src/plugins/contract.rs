//! The WIT contract (`plugins/wit/crm-plugin.wit`) as Rust: generated
//! bindings for both worlds, and the version rule the host applies when it
//! loads a plugin.
//!
//! A plugin's contract version is the version of the `crm:plugin` interface
//! it exports (`crm:plugin/step@1.0.0` or `crm:plugin/sender@1.0.0`). The
//! host loads it when the major version equals [`CONTRACT_MAJOR`] and its
//! minor version is at most [`CONTRACT_MINOR`]: additions (a new host import,
//! a new interface) bump the minor version, so a plugin built against an
//! older minor still finds everything it imports; any change or removal of
//! what exists bumps the major version.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::{Error, Result};

/// Bindings of the `step-plugin` world.
#[allow(missing_docs)]
pub mod step_world {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "step-plugin",
    });
}

/// Bindings of the `sender-adapter` world (sharing the step world's types,
/// log and config interfaces).
#[allow(missing_docs)]
pub mod sender_world {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "sender-adapter",
        with: {
            "crm:plugin/types": super::step_world::crm::plugin::types,
            "crm:plugin/log": super::step_world::crm::plugin::log,
            "crm:plugin/config": super::step_world::crm::plugin::config,
        },
    });
}

/// The contract's package name.
pub const PACKAGE: &str = "crm:plugin";
/// The contract's major version this host implements.
pub const CONTRACT_MAJOR: u64 = 1;
/// The newest minor version of the contract this host implements.
pub const CONTRACT_MINOR: u64 = 0;

/// What a plugin is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Exports `crm:plugin/step`: custom step types.
    Step,
    /// Exports `crm:plugin/sender`: delivers messages.
    Sender,
}

impl PluginKind {
    /// Stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Step => "step",
            PluginKind::Sender => "sender",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<PluginKind> {
        match s {
            "step" => Some(PluginKind::Step),
            "sender" => Some(PluginKind::Sender),
            _ => None,
        }
    }
}

/// The host's own contract version, `1.0.0`.
pub fn host_version() -> String {
    format!("{CONTRACT_MAJOR}.{CONTRACT_MINOR}.0")
}

/// Finds which world a compiled component implements and checks its
/// contract version against the host's.
///
/// # Errors
///
/// [`Error::Invalid`] when the component exports neither world, exports
/// both, or was built against a contract version this host cannot load.
pub fn inspect(engine: &Engine, component: &Component) -> Result<(PluginKind, String)> {
    let mut found: Vec<(PluginKind, String)> = Vec::new();
    for (name, _) in component.component_type().exports(engine) {
        let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
        let kind = match iface {
            "step" => PluginKind::Step,
            "sender" => PluginKind::Sender,
            _ => continue,
        };
        found.push((kind, version.to_string()));
    }
    let (kind, version) = match found.as_slice() {
        [] => {
            return Err(Error::invalid(format!(
                "the component exports neither {PACKAGE}/step nor {PACKAGE}/sender: it is not a CRM plugin"
            )));
        }
        [one] => one.clone(),
        _ => {
            return Err(Error::invalid(
                "the component exports both plugin worlds: a plugin is a step plugin or a sender adapter",
            ));
        }
    };
    check_version(&version)?;
    Ok((kind, version))
}

/// Applies the version rule to a contract version (`major.minor.patch`).
///
/// # Errors
///
/// [`Error::Invalid`] naming both versions.
pub fn check_version(version: &str) -> Result<()> {
    let host = host_version();
    let parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse::<u64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::invalid(format!(
                "contract version {version:?} is not major.minor.patch (this module implements {PACKAGE}@{host})"
            ))
        })?;
    let [major, minor, _patch] = parts[..] else {
        return Err(Error::invalid(format!(
            "contract version {version:?} is not major.minor.patch (this module implements {PACKAGE}@{host})"
        )));
    };
    if major != CONTRACT_MAJOR {
        return Err(Error::invalid(format!(
            "the plugin was built against {PACKAGE}@{version}; this module implements {PACKAGE}@{host} and loads only major version {CONTRACT_MAJOR}"
        )));
    }
    if minor > CONTRACT_MINOR {
        return Err(Error::invalid(format!(
            "the plugin was built against {PACKAGE}@{version}, newer than this module's {PACKAGE}@{host}: upgrade the module or rebuild the plugin against {CONTRACT_MAJOR}.{CONTRACT_MINOR}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_and_older_or_equal_minor_load() {
        check_version("1.0.0").unwrap();
        check_version("1.0.7").unwrap();
        let e = check_version("2.0.0").unwrap_err().to_string();
        assert!(
            e.contains("crm:plugin@2.0.0") && e.contains("major version 1"),
            "{e}"
        );
        let e = check_version("1.1.0").unwrap_err().to_string();
        assert!(e.contains("newer than"), "{e}");
        assert!(check_version("1.0").is_err());
        assert!(check_version("x").is_err());
    }
}
