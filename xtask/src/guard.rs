//! The no-IO guard: which crates of a dependency tree are forbidden.

/// A crate in `cargo tree` output: name and version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Dep {
    /// Package name, as cargo prints it.
    pub(crate) name: String,
    /// Version, as cargo prints it (`v1.2.3`).
    pub(crate) version: String,
}

/// The distinct crates listed by `cargo tree --prefix none`, sorted, without
/// `root` itself. Each line reads `name vX.Y.Z [(path)] [(proc-macro)] [(*)]`.
pub(crate) fn parse_tree(output: &str, root: &str) -> Vec<Dep> {
    let mut deps: Vec<Dep> = output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let version = words.next().unwrap_or("");
            (name != root).then(|| Dep {
                name: name.to_owned(),
                version: version.to_owned(),
            })
        })
        .collect();
    deps.sort();
    deps.dedup();
    deps
}

/// The crates of `deps` that match a pattern in `forbidden`.
pub(crate) fn forbidden<'a>(deps: &'a [Dep], forbidden: &[&str]) -> Vec<&'a Dep> {
    deps.iter()
        .filter(|dep| forbidden.iter().any(|pattern| matches(pattern, &dep.name)))
        .collect()
}

/// Whether crate `name` matches `pattern`: equal, or starting with the
/// pattern's prefix if it ends with `*`. `-` and `_` count as the same
/// character, as they do for crate names on crates.io.
fn matches(pattern: &str, name: &str) -> bool {
    let name = name.replace('-', "_");
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(&prefix.replace('-', "_")),
        None => name == pattern.replace('-', "_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::NO_IO_FORBIDDEN;

    /// Output shaped like `cargo tree -p sync-core -e normal --prefix none`.
    const TREE: &str = "\
sync-core v0.1.0 (/work/main/sync-core)
serde v1.0.229
serde_derive v1.0.229 (proc-macro)
proc-macro2 v1.0.107
serde v1.0.229 (*)
time-core v0.1.2
";

    /// Shorthand for a [`Dep`].
    fn dep(name: &str, version: &str) -> Dep {
        Dep {
            name: name.to_owned(),
            version: version.to_owned(),
        }
    }

    #[test]
    fn parses_distinct_crates_without_the_root() {
        assert_eq!(
            parse_tree(TREE, "sync-core"),
            vec![
                dep("proc-macro2", "v1.0.107"),
                dep("serde", "v1.0.229"),
                dep("serde_derive", "v1.0.229"),
                dep("time-core", "v0.1.2"),
            ]
        );
    }

    #[test]
    fn clean_tree_has_nothing_forbidden() {
        let deps = parse_tree(TREE, "sync-core");
        assert!(forbidden(&deps, NO_IO_FORBIDDEN).is_empty());
    }

    #[test]
    fn finds_exact_names_prefixes_and_underscore_spellings() {
        let tree = "\
sync-core v0.1.0
tokio v1.40.0
tokio-util v0.7.0
wasm-bindgen-futures v0.4.0
getrandom v0.3.3
uniffi_core v0.32.0
indexed-db-futures v0.6.0
timeless v1.0.0
";
        let deps = parse_tree(tree, "sync-core");
        let found: Vec<&str> = forbidden(&deps, NO_IO_FORBIDDEN)
            .iter()
            .map(|dep| dep.name.as_str())
            .collect();
        assert_eq!(
            found,
            [
                "getrandom",
                "indexed-db-futures",
                "tokio",
                "tokio-util",
                "uniffi_core",
                "wasm-bindgen-futures",
            ]
        );
    }
}
