//! `cargo xtask deps`: the dependency rules of `docs/ARCHITECTURE.md`, checked against
//! `cargo metadata`.
//!
//! Each crate's section of the map (a heading ``### `crates/DIR` (`PACKAGE`...``) may carry a
//! line ``**Never depends on**: `a`, `b`, ...`` (or "any other crate of the workspace"). A
//! package that depends on a forbidden one, directly or through any chain of dependencies
//! (normal, build or dev), breaks the rule; so does a workspace library crate that the map
//! does not describe. It also checks the rule that no file imports a file that imports it
//! back: within each crate, two source files that name each other through `crate::` paths
//! (outside tests and comments) are an error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// What the map forbids: package name to the packages it must never depend on.
pub type Rules = BTreeMap<String, BTreeSet<String>>;

/// The marker of a rule line.
const MARKER: &str = "**Never depends on**:";
/// The words that forbid every other crate of the workspace.
const ANY_OTHER: &str = "any other crate of the workspace";

/// The rules of the map `text`, with `members` the workspace's packages.
pub fn rules(text: &str, members: &BTreeSet<String>) -> Result<Rules> {
    let mut out = Rules::new();
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(rest) = line.strip_prefix("### `crates/") {
            // "### `crates/ops` (`denoise-ops`)": the package in the first parentheses.
            current = rest
                .split("(`")
                .nth(1)
                .and_then(|s| s.split('`').next())
                .map(str::to_string);
            continue;
        }
        if line.starts_with("### ") {
            current = None;
            continue;
        }
        let Some(rest) = line.trim_start().strip_prefix(MARKER) else {
            continue;
        };
        let Some(pkg) = &current else {
            bail!(
                "line {}: a rule outside a crate's section (### `crates/DIR` (`PACKAGE`))",
                i + 1
            );
        };
        let mut forbidden: BTreeSet<String> = rest
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        if rest.contains(ANY_OTHER) {
            forbidden.extend(members.iter().filter(|m| *m != pkg).cloned());
        }
        if forbidden.is_empty() {
            bail!("line {}: a rule for {pkg} that names no crate", i + 1);
        }
        out.entry(pkg.clone()).or_default().extend(forbidden);
    }
    Ok(out)
}

/// The workspace as `cargo metadata` sees it.
pub struct Graph {
    /// Workspace package names, with whether each has a library target.
    pub members: BTreeMap<String, bool>,
    /// Package name to the names of its direct dependencies (all kinds), for every package.
    pub deps: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Reads `cargo metadata` in `root`.
    pub fn load(root: &Path) -> Result<Self> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(root)
            .args(["metadata", "--format-version", "1"])
            .output()
            .context("running cargo metadata")?;
        if !out.status.success() {
            bail!(
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let meta: Value = serde_json::from_slice(&out.stdout).context("cargo metadata's JSON")?;
        Self::from_metadata(&meta)
    }

    /// The graph of `cargo metadata`'s JSON.
    pub fn from_metadata(meta: &Value) -> Result<Self> {
        let packages = meta["packages"].as_array().context("no packages")?;
        let name_of: BTreeMap<&str, &str> = packages
            .iter()
            .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
            .collect();
        let ids: BTreeSet<&str> = meta["workspace_members"]
            .as_array()
            .context("no workspace_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let members = packages
            .iter()
            .filter(|p| p["id"].as_str().is_some_and(|id| ids.contains(id)))
            .map(|p| {
                let lib = p["targets"].as_array().is_some_and(|ts| {
                    ts.iter().any(|t| {
                        t["kind"]
                            .as_array()
                            .is_some_and(|k| k.contains(&"lib".into()))
                    })
                });
                (p["name"].as_str().unwrap_or_default().to_string(), lib)
            })
            .collect();
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in meta["resolve"]["nodes"]
            .as_array()
            .context("no resolve graph")?
        {
            let Some(name) = node["id"].as_str().and_then(|id| name_of.get(id)) else {
                continue;
            };
            let set = deps.entry(name.to_string()).or_default();
            for d in node["deps"].as_array().into_iter().flatten() {
                if let Some(n) = d["pkg"].as_str().and_then(|id| name_of.get(id)) {
                    set.insert(n.to_string());
                }
            }
        }
        Ok(Self { members, deps })
    }

    /// Every package that `pkg` depends on, directly or not, each with the chain that leads
    /// there (`pkg -> a -> b`).
    pub fn reachable(&self, pkg: &str) -> BTreeMap<String, String> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut stack = vec![(pkg.to_string(), pkg.to_string())];
        while let Some((p, chain)) = stack.pop() {
            for d in self.deps.get(&p).into_iter().flatten() {
                if !seen.contains_key(d) {
                    let next = format!("{chain} -> {d}");
                    seen.insert(d.clone(), next.clone());
                    stack.push((d.clone(), next));
                }
            }
        }
        seen
    }
}

/// The broken rules, one line each (empty when every rule holds).
pub fn violations(graph: &Graph, rules: &Rules) -> Vec<String> {
    let mut out = Vec::new();
    for (pkg, &lib) in &graph.members {
        if lib && !rules.contains_key(pkg) {
            out.push(format!(
                "{pkg}: not in docs/ARCHITECTURE.md's code map with a `{MARKER}` line"
            ));
        }
    }
    for (pkg, forbidden) in rules {
        if !graph.members.contains_key(pkg) {
            out.push(format!(
                "{pkg}: a rule for a package the workspace does not have"
            ));
            continue;
        }
        let reach = graph.reachable(pkg);
        for f in forbidden {
            if let Some(chain) = reach.get(f) {
                out.push(format!("{pkg} must never depend on {f}, but {chain}"));
            }
        }
    }
    out
}

/// The modules that `source` names through `crate::` paths (`crate::a::b`, `crate::{a, b}`),
/// outside comments and its `#[cfg(test)] mod tests`.
pub fn crate_refs(source: &str) -> BTreeSet<String> {
    let code = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for part in code.split("crate::").skip(1) {
        if let Some(group) = part.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            for item in inner.split(',') {
                out.insert(ident(item.trim()));
            }
        } else {
            out.insert(ident(part));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Pairs of files of one crate's `src` folder that import each other (`a.rs <-> b.rs`), leaving
/// out `lib.rs` and `main.rs`, which declare the modules.
pub fn mutual_imports(src: &Path) -> Result<Vec<String>> {
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in std::fs::read_dir(src).with_context(|| src.display().to_string())? {
        let path = e?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|x| x == "rs") && stem != "lib" && stem != "main" {
            let text = std::fs::read_to_string(&path)?;
            refs.insert(stem.to_string(), crate_refs(&text));
        }
    }
    let mut out = Vec::new();
    for (a, names) in &refs {
        for b in names {
            if a < b && refs.get(b).is_some_and(|r| r.contains(a)) {
                out.push(format!(
                    "{}: {a}.rs and {b}.rs import each other",
                    src.display()
                ));
            }
        }
    }
    Ok(out)
}

/// `cargo xtask deps`.
pub fn check(root: &Path) -> Result<()> {
    let graph = Graph::load(root)?;
    let path = root.join("docs/ARCHITECTURE.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let members: BTreeSet<String> = graph.members.keys().cloned().collect();
    let rules = rules(&text, &members).with_context(|| path.display().to_string())?;
    let mut broken = violations(&graph, &rules);
    let mut srcs: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("crates"))?
        .filter_map(|e| Some(e.ok()?.path().join("src")))
        .filter(|p| p.is_dir())
        .collect();
    srcs.push(root.join("xtask/src"));
    srcs.sort();
    for src in &srcs {
        broken.extend(mutual_imports(src)?);
    }
    for (pkg, forbidden) in &rules {
        let names: Vec<&str> = forbidden.iter().map(String::as_str).collect();
        println!("{pkg}: never {}", names.join(", "));
    }
    if !broken.is_empty() {
        bail!(
            "{} dependency rule(s) of docs/ARCHITECTURE.md broken:\n  {}",
            broken.len(),
            broken.join("\n  ")
        );
    }
    println!(
        "all {} rules hold; no two files of {} source folders import each other",
        rules.len(),
        srcs.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)], members: &[&str]) -> Graph {
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            deps.entry(a.to_string()).or_default().insert(b.to_string());
        }
        Graph {
            members: members.iter().map(|m| (m.to_string(), true)).collect(),
            deps,
        }
    }

    #[test]
    fn rules_are_read_from_the_map_and_checked_through_chains() {
        let text = "### `crates/ops` (`ops`)\nKernels.\n**Never depends on**: any other crate of \
                    the workspace.\n### `crates/model` (`model`)\n**Never depends on**: `data`, \
                    `serde_yaml`.\n### `xtask`\n";
        let members: BTreeSet<String> = ["ops", "model", "data"].map(String::from).into();
        let r = rules(text, &members).unwrap();
        assert_eq!(r["ops"], ["data", "model"].map(String::from).into());
        assert_eq!(r["model"], ["data", "serde_yaml"].map(String::from).into());
        let members = ["ops", "model", "data"];
        // data has no rule: reported; model -> ops -> data breaks model's rule.
        let g = graph(&[("model", "ops"), ("ops", "data")], &members);
        let v = violations(&g, &r);
        assert!(v.iter().any(|l| l.starts_with("data: not in")), "{v:?}");
        assert!(
            v.contains(&"model must never depend on data, but model -> ops -> data".into()),
            "{v:?}"
        );
        assert!(
            v.contains(&"ops must never depend on data, but ops -> data".into()),
            "{v:?}"
        );
        let fine = graph(&[("model", "ops")], &["ops", "model"]);
        assert!(violations(&fine, &r).is_empty());
        assert!(rules(
            "**Never depends on**: `x`",
            &members.map(String::from).into()
        )
        .is_err());
    }

    #[test]
    fn imports_are_read_from_crate_paths_outside_comments_and_tests() {
        let src =
            "use crate::a::{X, Y};\nuse crate::{b, c::Z};\n// crate::d\nfn f() { crate::e::g() }\n\
                   #[cfg(test)]\nmod tests {\n    use crate::h;\n}\n";
        let want: BTreeSet<String> = ["a", "b", "c", "e"].map(String::from).into();
        assert_eq!(crate_refs(src), want);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.rs"), "use crate::b::X;").unwrap();
        std::fs::write(dir.path().join("b.rs"), "fn f() { crate::a::y() }").unwrap();
        std::fs::write(dir.path().join("c.rs"), "use crate::a;").unwrap();
        std::fs::write(dir.path().join("lib.rs"), "pub use crate::c;").unwrap();
        let pairs = mutual_imports(dir.path()).unwrap();
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        assert!(pairs[0].ends_with("a.rs and b.rs import each other"));
    }

    /// The workspace itself keeps the rules of its map: a forbidden dependency fails CI here.
    #[test]
    fn the_workspace_keeps_the_rules_of_its_map() {
        check(&crate::root()).unwrap();
    }
}
