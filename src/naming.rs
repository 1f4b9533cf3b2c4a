//! Names derived from user-given names, shared by the config's checks and the integrations
//! that show them (so a check and what it checks cannot drift apart).

/// A destination name as it may appear in an entity id: lower-case letters, digits and single
/// underscores inside (Home Assistant refuses `__` and a leading or trailing `_`).
pub fn entity_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_');
    if out.is_empty() {
        "destination".into()
    } else {
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_ids_stay_valid() {
        assert_eq!(entity_part("My Dropbox-2"), "my_dropbox_2");
        assert_eq!(entity_part("-my--box-"), "my_box");
        assert_eq!(entity_part("ä"), "destination");
    }
}
