//! Where each Drive file goes in the mirror: its folders' names from My Drive's root (shared
//! drives under `shared-drives/<drive>/`, files shared with the account from folders it cannot
//! see under `shared-with-me/`), the export's extension for Docs Editors files, and what is not
//! mirrored and why (Forms, Sites, shortcuts; the exclusions).

use std::collections::{BTreeMap, HashMap};

use super::state::FileRow;
use crate::sources::google_drive::GoogleDriveConfig;

/// The pseudo-parent of shared drives' root folders.
pub const SHARED_DRIVES: &str = "offsite:shared-drives";

/// (path, skip reason) of every file that is not a folder, by id.
pub type Resolved = HashMap<String, (Option<String>, Option<String>)>;

fn safe(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    match n.trim() {
        "" | "." | ".." => "_".into(),
        _ => n,
    }
}

pub struct Exclusions {
    paths: Vec<String>,
    patterns: globset::GlobSet,
}

impl Exclusions {
    pub fn new(cfg: &GoogleDriveConfig) -> Exclusions {
        let mut b = globset::GlobSetBuilder::new();
        for p in &cfg.exclude_patterns {
            // Validated with the configuration.
            if let Ok(g) = globset::Glob::new(p) {
                b.add(g);
            }
        }
        Exclusions {
            paths: cfg
                .exclude_paths
                .iter()
                .map(|p| p.trim_matches('/').to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            patterns: b.build().unwrap_or_else(|_| globset::GlobSet::empty()),
        }
    }

    fn why(&self, path: &str, name: &str) -> Option<String> {
        if let Some(p) = self
            .paths
            .iter()
            .find(|p| path == p.as_str() || path.starts_with(&format!("{p}/")))
        {
            return Some(format!("excluded by exclude_paths ({p:?})"));
        }
        if self.patterns.is_match(name) {
            return Some("excluded by exclude_patterns".into());
        }
        None
    }
}

/// Why a Google type is not mirrored, if it is not.
fn not_exportable(mime: &str) -> Option<&'static str> {
    Some(match mime {
        "application/vnd.google-apps.form" => "a Google Form cannot be exported by the Drive API",
        "application/vnd.google-apps.site" => "a Google Site cannot be exported by the Drive API",
        "application/vnd.google-apps.shortcut" => {
            "a shortcut: its target is mirrored where it lives"
        }
        "application/vnd.google-apps.map" => "a My Maps map cannot be exported by the Drive API",
        "application/vnd.google-apps.jam" => "a Jamboard cannot be exported by the Drive API",
        m if m.starts_with("application/vnd.google-apps.") => {
            "a Google type with no export format configured"
        }
        _ => return None,
    })
}

pub fn resolve(rows: &[FileRow], root_id: &str, cfg: &GoogleDriveConfig) -> Resolved {
    let by_id: HashMap<&str, &FileRow> = rows.iter().map(|r| (r.file_id.as_str(), r)).collect();
    let excl = Exclusions::new(cfg);
    let mut folder_paths: HashMap<&str, Option<String>> = HashMap::new();
    // A folder's path, or None when it (or one above it) is removed.
    fn folder_path<'a>(
        id: &'a str,
        root: &str,
        by_id: &HashMap<&'a str, &'a FileRow>,
        memo: &mut HashMap<&'a str, Option<String>>,
        depth: usize,
    ) -> Option<String> {
        if id == root {
            return Some(String::new());
        }
        if id == SHARED_DRIVES {
            return Some("shared-drives".into());
        }
        if let Some(p) = memo.get(id) {
            return p.clone();
        }
        let path = match by_id.get(id) {
            // A folder the account cannot see: shared with it from elsewhere.
            None => Some("shared-with-me".into()),
            Some(_) if depth > 200 => None,
            Some(r) if r.removed => None,
            Some(r) => {
                let up = match r.parent.as_deref() {
                    Some(p) => folder_path(p, root, by_id, memo, depth + 1),
                    None => Some("shared-with-me".into()),
                };
                up.map(|u| join(&u, &safe(&r.name)))
            }
        };
        memo.insert(id, path.clone());
        path
    }
    let mut out = Resolved::new();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut files: Vec<&FileRow> = rows.iter().filter(|r| !r.is_folder).collect();
    files.sort_by(|a, b| a.file_id.cmp(&b.file_id));
    for r in files {
        if r.removed {
            out.insert(r.file_id.clone(), (None, None));
            continue;
        }
        let dir = match r.parent.as_deref() {
            Some(p) => folder_path(p, root_id, &by_id, &mut folder_paths, 0),
            None => Some("shared-with-me".into()),
        };
        let Some(dir) = dir else {
            // In a removed folder: removed with it.
            out.insert(r.file_id.clone(), (None, None));
            continue;
        };
        let mut name = safe(&r.name);
        if r.mime.starts_with("application/vnd.google-apps.") {
            match cfg.export.for_mime(&r.mime) {
                Some((ext, _)) => {
                    if !name.to_lowercase().ends_with(&format!(".{ext}")) {
                        name = format!("{name}.{ext}");
                    }
                }
                None => {
                    let why = not_exportable(&r.mime).unwrap_or("not exportable");
                    out.insert(r.file_id.clone(), (None, Some(why.to_string())));
                    continue;
                }
            }
        }
        let mut path = join(&dir, &name);
        if let Some(why) = excl.why(&path, &r.name) {
            out.insert(r.file_id.clone(), (None, Some(why)));
            continue;
        }
        if taken.contains_key(&path) {
            // Drive allows two files of one name in a folder; the mirror cannot.
            let (stem, ext) = match name.rsplit_once('.') {
                Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
                _ => (name.clone(), String::new()),
            };
            path = join(&dir, &format!("{stem} ({}){ext}", r.file_id));
        }
        taken.insert(path.clone(), r.file_id.clone());
        out.insert(r.file_id.clone(), (Some(path), None));
    }
    out
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: &str, mime: &str, parent: &str) -> FileRow {
        FileRow {
            file_id: id.into(),
            name: name.into(),
            mime: mime.into(),
            parent: Some(parent.into()),
            is_folder: mime == crate::sources::google_drive::FOLDER,
            size: Some(1),
            md5: None,
            modified_time: None,
            meta: "{}".into(),
            path: None,
            skipped: None,
            removed: false,
            rev: 1,
        }
    }

    #[test]
    fn paths_follow_folders_exports_and_exclusions() {
        let cfg: GoogleDriveConfig = toml::from_str(
            r#"destinations = ["s3"]
               exclude_paths = ["Tmp"]
               exclude_patterns = ["*.tmp", ".DS_Store"]"#,
        )
        .unwrap();
        let folder = crate::sources::google_drive::FOLDER;
        let mut gone = row("g", "Gone", folder, "root");
        gone.removed = true;
        let rows = vec![
            row("f1", "Work", folder, "root"),
            row("f2", "Sub/Dir", folder, "f1"),
            row("a", "report.pdf", "application/pdf", "f2"),
            row("b", "Plan", "application/vnd.google-apps.document", "f1"),
            row("c", "Survey", "application/vnd.google-apps.form", "f1"),
            row("d", "x.tmp", "text/plain", "root"),
            row("t", "Tmp", folder, "root"),
            row("e", "in tmp", "text/plain", "t"),
            row("h", "same", "text/plain", "root"),
            row("i", "same", "text/plain", "root"),
            row("s", "shared", "text/plain", "someone-elses-folder"),
            gone,
            row("j", "lost.txt", "text/plain", "g"),
        ];
        let r = resolve(&rows, "root", &cfg);
        let path = |id: &str| r[id].0.clone();
        assert_eq!(path("a").as_deref(), Some("Work/Sub_Dir/report.pdf"));
        assert_eq!(path("b").as_deref(), Some("Work/Plan.docx"));
        assert!(r["c"].1.as_deref().unwrap().contains("Form"));
        assert!(r["d"].1.as_deref().unwrap().contains("exclude_patterns"));
        assert!(r["e"].1.as_deref().unwrap().contains("exclude_paths"));
        assert_eq!(path("h").as_deref(), Some("same"));
        assert_eq!(path("i").as_deref(), Some("same (i)"));
        assert_eq!(path("s").as_deref(), Some("shared-with-me/shared"));
        assert_eq!(r["j"], (None, None));
        assert!(!r.contains_key("f1"));
    }
}
