//! Installed software: one package as the inventory plugin reports it, and the
//! inventory document that carries a host's whole list to the server.
//!
//! A package line (`hids-plugin-inventory --once`, and the added/removed/upgraded events)
//! uses ECS `package.*`; the source package a distribution package was built from, which
//! is what security feeds name, is ours: `hids.package_source`.
//!
//! The whole list travels as `inventory` events (`hids.inventory`), compact and cut in
//! parts under the frame limit. Its hash ([`inventory_hash`]) names the content: the
//! server stores identical inventories (most hosts of one image) once, and a host whose
//! list did not change sends the hash alone.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What kind of software a package is: which database or layout it was read from, and
/// so which version ordering applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageType {
    /// dpkg's status file.
    Deb,
    /// rpm's database (sqlite, Berkeley DB or ndb).
    Rpm,
    /// A Python distribution (`*.dist-info`, `*.egg-info`).
    Python,
    /// An npm package (`node_modules/*/package.json`).
    Npm,
    /// A Java archive a running process has open (manifest, `pom.properties`).
    Jar,
    /// The running kernel.
    Kernel,
}

impl PackageType {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageType::Deb => "deb",
            PackageType::Rpm => "rpm",
            PackageType::Python => "python",
            PackageType::Npm => "npm",
            PackageType::Jar => "jar",
            PackageType::Kernel => "kernel",
        }
    }

    pub fn parse(text: &str) -> Option<PackageType> {
        Some(match text {
            "deb" => PackageType::Deb,
            "rpm" => PackageType::Rpm,
            "python" => PackageType::Python,
            "npm" => PackageType::Npm,
            "jar" => PackageType::Jar,
            "kernel" => PackageType::Kernel,
            _ => return None,
        })
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    #[serde(rename = "type")]
    pub kind: PackageType,
    pub name: String,
    /// As the package database writes it (`1:2.38-4+deb12u1`; rpm: `[epoch:]version-release`).
    pub version: String,
    /// `amd64`, `x86_64`, `noarch`, `all`; empty when the format has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// The source package it was built from (deb, rpm); empty when the same as `name`
    /// or unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The source package's version; empty when the same as `version`. Debian binNMUs
    /// differ: `bash 5.2.15-2+b8` comes from source `bash 5.2.15-2`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_version: String,
    /// Where it was found (a jar's path, a Python site directory); empty for packages of
    /// the distribution's database.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

impl Package {
    /// The source package's name: `source`, or the package's own name.
    pub fn source_name(&self) -> &str {
        if self.source.is_empty() {
            &self.name
        } else {
            &self.source
        }
    }

    /// The source package's version: `source_version`, or the package's own version.
    pub fn source_version(&self) -> &str {
        if self.source_version.is_empty() {
            &self.version
        } else {
            &self.source_version
        }
    }
}

/// ECS `package.*` of an event: the fields ECS defines. The source package is ours
/// (`hids.package_source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcsPackage {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    #[serde(rename = "type")]
    pub kind: PackageType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// `hids.package_source`: the source package a distribution package was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSource {
    pub name: String,
    pub version: String,
}

impl Package {
    /// The ECS view of the package, and its source package where it has one (deb, rpm).
    pub fn ecs(&self) -> (EcsPackage, Option<PackageSource>) {
        let ecs = EcsPackage {
            name: self.name.clone(),
            version: self.version.clone(),
            architecture: self.architecture.clone(),
            kind: self.kind,
            path: self.path.clone(),
        };
        let source =
            matches!(self.kind, PackageType::Deb | PackageType::Rpm).then(|| PackageSource {
                name: self.source_name().to_owned(),
                version: self.source_version().to_owned(),
            });
        (ecs, source)
    }
}

/// The host's operating system, from `os-release(5)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OsRelease {
    /// `ID`: `debian`, `ubuntu`, `rhel`, `rocky`, ...
    #[serde(default)]
    pub id: String,
    /// `VERSION_ID`: `12`, `9.3`.
    #[serde(default)]
    pub version_id: String,
    /// `VERSION_CODENAME`: `bookworm` (what the Debian security tracker keys releases by).
    #[serde(default)]
    pub codename: String,
    /// `PRETTY_NAME`.
    #[serde(default)]
    pub name: String,
}

/// ECS `event.action` of the inventory transport events (`hids.inventory`).
pub const INVENTORY_ACTION: &str = "inventory";

/// One part of a host's inventory, under `hids.inventory` of an `inventory` event.
///
/// A changed list is sent as `parts` events numbered from 0, each with some of the
/// packages, all naming the hash of the whole; an unchanged list as one event with the
/// hash and `parts: 0`. The server publishes a list only when every part has come and
/// the packages hash to the hash named: nothing partial, and a host cannot pass off its
/// own list under another's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryPart {
    /// [`inventory_hash`] of the whole list (hex).
    pub hash: String,
    /// Packages in the whole list.
    pub packages: u64,
    /// This part's number, from 0.
    #[serde(default)]
    pub part: u32,
    /// How many parts carry the list; 0 when only the hash is sent.
    pub parts: u32,
    #[serde(default)]
    pub os: OsRelease,
    /// `uname -r`.
    #[serde(default)]
    pub kernel: String,
    /// This part's packages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Package>,
    /// Set when the list is being sent because an operator asked (`hidsctl snapshot
    /// --plugin inventory`): the command's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
}

/// The hash that names an inventory: SHA-256 over the OS, the kernel and the packages in
/// sorted order, every field length-prefixed (no two lists share an input). Hex.
///
/// `packages` must be sorted and without duplicates (as the plugin sends them); the
/// server recomputes it over what it received.
pub fn inventory_hash(os: &OsRelease, kernel: &str, packages: &[Package]) -> String {
    let mut h = Sha256::new();
    let mut field = |text: &str| {
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    };
    for text in [&os.id, &os.version_id, &os.codename, &os.name] {
        field(text);
    }
    field(kernel);
    for p in packages {
        for text in [
            p.kind.as_str(),
            &p.name,
            &p.version,
            &p.architecture,
            &p.source,
            &p.source_version,
            &p.path,
        ] {
            field(text);
        }
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(name: &str, version: &str) -> Package {
        Package {
            kind: PackageType::Deb,
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            source: String::new(),
            source_version: String::new(),
            path: String::new(),
        }
    }

    #[test]
    fn the_hash_names_the_content_and_fields_cannot_run_into_each_other() {
        let os = OsRelease::default();
        let a = inventory_hash(&os, "6.1", &[deb("ab", "1"), deb("c", "2")]);
        assert_eq!(
            a,
            inventory_hash(&os, "6.1", &[deb("ab", "1"), deb("c", "2")])
        );
        assert_ne!(
            a,
            inventory_hash(&os, "6.1", &[deb("a", "b1"), deb("c", "2")])
        );
        assert_ne!(
            a,
            inventory_hash(&os, "6.2", &[deb("ab", "1"), deb("c", "2")])
        );
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn a_binnmu_names_its_source_version() {
        let mut bash = deb("bash", "5.2.15-2+b8");
        bash.source_version = "5.2.15-2".into();
        assert_eq!(bash.source_name(), "bash");
        assert_eq!(bash.source_version(), "5.2.15-2");
        let line = serde_json::to_string(&bash).unwrap();
        assert!(line.contains(r#""type":"deb""#), "{line}");
        assert!(!line.contains("path"), "{line}");
    }
}
