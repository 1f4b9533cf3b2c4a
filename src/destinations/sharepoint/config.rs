//! `type = "sharepoint"`: where the library is, how the app signs in, what to do about a name
//! that is taken. Validation errors name the field.

use serde::Deserialize;

use crate::redact::Secret;

pub const DEFAULT_LOGIN_URL: &str = "https://login.microsoftonline.com";
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";
pub const DEFAULT_LIBRARY: &str = "Documents";

/// Graph's `@microsoft.graph.conflictBehavior` for a name already taken in the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// The upload fails, naming the file.
    Fail,
    /// The existing file is replaced (SharePoint keeps it as an older version).
    Replace,
    /// SharePoint stores the upload under a free name (`name 1.tar`).
    #[default]
    Rename,
}

impl Conflict {
    pub fn as_str(self) -> &'static str {
        match self {
            Conflict::Fail => "fail",
            Conflict::Replace => "replace",
            Conflict::Rename => "rename",
        }
    }
}

/// The SharePoint-specific part of `[destinations.<name>]` (chunk size, retention and
/// throttling are common to every destination).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharePointConfig {
    /// Directory (tenant) id of the Azure app registration, or the tenant's domain. With
    /// `managed_identity` optional: when given, the identity must belong to this tenant.
    #[serde(default)]
    pub tenant_id: String,
    /// Application (client) id. With `managed_identity`: the client id of a user-assigned
    /// identity, or empty for the host's system-assigned one.
    #[serde(default)]
    pub client_id: String,
    /// Sign in as the Azure host's managed identity, through the Azure Instance Metadata
    /// Service, instead of with an app's secret or certificate. Only an Azure VM has one.
    #[serde(default)]
    pub managed_identity: bool,
    /// The Instance Metadata Service's token endpoint (for tests; Azure's is fixed).
    #[serde(default = "default_identity_endpoint")]
    pub identity_endpoint: String,
    /// A client secret of the app registration; or sign in with a certificate instead
    /// (`certificate_key` + `certificate_thumbprint`).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// PEM file with the private key of a certificate uploaded to the app registration
    /// (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`).
    #[serde(default)]
    pub certificate_key: Option<std::path::PathBuf>,
    /// That certificate's thumbprint as the Azure portal shows it (SHA-1, 40 hex digits).
    #[serde(default)]
    pub certificate_thumbprint: Option<String>,
    /// The site: `contoso.sharepoint.com/sites/Backups`, the same with `https://`, or just
    /// `contoso.sharepoint.com` for the root site.
    pub site: String,
    /// The document library (drive) by name.
    #[serde(default = "default_library")]
    pub library: String,
    /// Folder inside the library ("" = its top level); created when missing.
    #[serde(default)]
    pub folder: String,
    #[serde(default)]
    pub conflict: Conflict,
    #[serde(default = "default_login_url")]
    pub login_url: String,
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
}

pub const DEFAULT_IDENTITY_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

fn default_identity_endpoint() -> String {
    DEFAULT_IDENTITY_ENDPOINT.into()
}
fn default_library() -> String {
    DEFAULT_LIBRARY.into()
}
fn default_login_url() -> String {
    DEFAULT_LOGIN_URL.into()
}
fn default_graph_url() -> String {
    DEFAULT_GRAPH_URL.into()
}

/// A thumbprint as the portal shows it (`D70D83…`, maybe with ':' or spaces) as its 20 bytes.
pub fn thumbprint_bytes(thumbprint: &str) -> Option<Vec<u8>> {
    let hex: String = thumbprint
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect();
    if hex.len() != 40 {
        return None;
    }
    (0..20)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A site as Graph addresses it: host name and server-relative path ("" for the root site).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRef {
    pub host: String,
    pub path: String,
}

impl SiteRef {
    /// Takes what a user pastes: `contoso.sharepoint.com/sites/Backups`,
    /// `https://contoso.sharepoint.com/sites/Backups/Shared%20Documents/Forms/AllItems.aspx`,
    /// `contoso.sharepoint.com:/sites/Backups:`, `contoso.sharepoint.com`.
    pub fn parse(site: &str) -> Result<SiteRef, String> {
        let s = site.trim();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        let (host, path) = match s.find('/') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let host = host.trim_end_matches(':').to_ascii_lowercase();
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(format!(
                "{site:?} does not start with a host name such as contoso.sharepoint.com"
            ));
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<String> = path
            .split('/')
            .map(|seg| seg.trim_end_matches(':'))
            .filter(|seg| !seg.is_empty())
            .map(|seg| {
                url::form_urlencoded::parse(seg.replace('+', "%2B").as_bytes())
                    .next()
                    .map(|(k, v)| {
                        if v.is_empty() {
                            k.into_owned()
                        } else {
                            format!("{k}={v}")
                        }
                    })
                    .unwrap_or_default()
            })
            .collect();
        // A site lives at /sites/{name} or /teams/{name}; anything after it (a library, a
        // page) is where the user happened to be in the browser.
        let path = match segments.first().map(String::as_str) {
            None => String::new(),
            Some("sites" | "teams" | "personal") if segments.len() >= 2 => {
                format!("/{}/{}", segments[0], segments[1])
            }
            Some(_) => {
                return Err(format!(
                    "{site:?}: a SharePoint site path is /sites/<name> or /teams/<name>"
                ));
            }
        };
        Ok(SiteRef { host, path })
    }
}

type Invalid = (&'static str, String);

impl SharePointConfig {
    /// The first problem found, as (field, message).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.managed_identity {
            self.validate_managed_identity()?;
        } else {
            self.validate_app()?;
        }
        self.validate_location()
    }

    fn tenant_id_is_well_formed(&self) -> Result<(), Invalid> {
        if !self
            .tenant_id
            .trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err((
                "tenant_id",
                "a tenant id (a GUID) or domain, without '/' or spaces".into(),
            ));
        }
        Ok(())
    }

    /// Signing in as the host's identity: no app credential, the rest optional.
    fn validate_managed_identity(&self) -> Result<(), Invalid> {
        for (field, set) in [
            ("client_secret", self.client_secret.is_some()),
            ("certificate_key", self.certificate_key.is_some()),
            (
                "certificate_thumbprint",
                self.certificate_thumbprint.is_some(),
            ),
        ] {
            if set {
                return Err((
                    field,
                    "not used with managed_identity = true (the host's identity signs in); remove it, or set managed_identity = false"
                        .into(),
                ));
            }
        }
        self.tenant_id_is_well_formed()?;
        if self.client_id.trim().contains(char::is_whitespace) {
            return Err((
                "client_id",
                "the client id of a user-assigned identity (a GUID), or empty for the system-assigned one"
                    .into(),
            ));
        }
        match url::Url::parse(&self.identity_endpoint) {
            Ok(u) if u.scheme() == "http" && u.host_str().is_some() => Ok(()),
            _ => Err((
                "identity_endpoint",
                format!("{:?} is not an http URL", self.identity_endpoint),
            )),
        }
    }

    /// Signing in as an app registration: tenant, client and a secret or certificate.
    fn validate_app(&self) -> Result<(), Invalid> {
        if self.tenant_id.trim().is_empty() {
            return Err((
                "tenant_id",
                "required: the Directory (tenant) ID of the Azure app registration".into(),
            ));
        }
        self.tenant_id_is_well_formed()?;
        if self.client_id.trim().is_empty() {
            return Err((
                "client_id",
                "required: the Application (client) ID of the Azure app registration".into(),
            ));
        }
        match (
            &self.client_secret,
            &self.certificate_key,
            &self.certificate_thumbprint,
        ) {
            (Some(secret), None, None) if secret.expose().trim().is_empty() => {
                return Err((
                    "client_secret",
                    "empty: a client secret of the app registration (its Value, not its ID)".into(),
                ));
            }
            (Some(_), None, None) => {}
            (None, Some(_), Some(thumbprint)) => {
                if thumbprint_bytes(thumbprint).is_none() {
                    return Err((
                        "certificate_thumbprint",
                        "the certificate's SHA-1 thumbprint: 40 hex digits, as the portal shows it"
                            .into(),
                    ));
                }
            }
            (Some(_), _, _) => {
                return Err((
                    "client_secret",
                    "either client_secret or certificate_key + certificate_thumbprint, not both"
                        .into(),
                ));
            }
            (None, Some(_), None) => {
                return Err((
                    "certificate_thumbprint",
                    "required with certificate_key".into(),
                ));
            }
            (None, None, Some(_)) => {
                return Err((
                    "certificate_key",
                    "required with certificate_thumbprint".into(),
                ));
            }
            (None, None, None) => {
                return Err((
                    "client_secret",
                    "required: a client secret of the app registration (its Value, not its \
                     ID), or certificate_key + certificate_thumbprint"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_location(&self) -> Result<(), Invalid> {
        if self.site.trim().is_empty() {
            return Err((
                "site",
                "required, for example contoso.sharepoint.com/sites/Backups".into(),
            ));
        }
        SiteRef::parse(&self.site).map_err(|e| ("site", e))?;
        if self.library.trim().is_empty() {
            return Err((
                "library",
                "the document library's name, for example Documents".into(),
            ));
        }
        let folder = self.folder.trim_matches('/');
        if !folder.is_empty()
            && folder.split('/').any(|s| {
                s.trim().is_empty()
                    || s == "."
                    || s == ".."
                    || s.chars().any(|c| "\"*:<>?\\|#%".contains(c))
            })
        {
            return Err((
                "folder",
                "folder names separated by single '/', without \".\", \"..\" or any of \" * : < > ? \\ | # %"
                    .into(),
            ));
        }
        for (field, url) in [
            ("login_url", &self.login_url),
            ("graph_url", &self.graph_url),
        ] {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => return Err((field, format!("{url:?} is not an http(s) URL"))),
            }
        }
        Ok(())
    }

    /// The folder without leading or trailing '/'.
    pub fn folder(&self) -> String {
        self.folder.trim_matches('/').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_are_read_in_every_form_a_user_pastes() {
        let backups = SiteRef {
            host: "contoso.sharepoint.com".into(),
            path: "/sites/Backups".into(),
        };
        for form in [
            "contoso.sharepoint.com/sites/Backups",
            "https://contoso.sharepoint.com/sites/Backups",
            "https://Contoso.SharePoint.com/sites/Backups/",
            "contoso.sharepoint.com:/sites/Backups:",
            "https://contoso.sharepoint.com/sites/Backups/Shared%20Documents/Forms/AllItems.aspx",
            " contoso.sharepoint.com/sites/Backups?web=1 ",
        ] {
            assert_eq!(SiteRef::parse(form).unwrap(), backups, "{form}");
        }
        assert_eq!(
            SiteRef::parse("https://contoso.sharepoint.com/teams/IT%20Ops").unwrap(),
            SiteRef {
                host: "contoso.sharepoint.com".into(),
                path: "/teams/IT Ops".into()
            }
        );
        assert_eq!(SiteRef::parse("contoso.sharepoint.com").unwrap().path, "");
        assert!(SiteRef::parse("/sites/Backups").is_err());
        assert!(SiteRef::parse("contoso.sharepoint.com/Shared Documents").is_err());
    }

    fn config(extra: &str) -> SharePointConfig {
        toml::from_str(&format!(
            "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"11111111-2222-3333-4444-555555555555\"\n\
             client_secret = \"abc~defghijklmnop\"\n{extra}"
        ))
        .unwrap()
    }

    const SITE: &str = "site = \"contoso.sharepoint.com/sites/Backups\"\n";

    #[test]
    fn defaults_and_field_names_in_errors() {
        let c = config(SITE);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.library, "Documents");
        assert_eq!(c.conflict, Conflict::Rename);
        assert_eq!(c.graph_url, DEFAULT_GRAPH_URL);
        let field = |extra: &str| config(extra).validate().unwrap_err().0;
        assert_eq!(
            config(&format!("{SITE}folder = \"/HA/Backups/\"")).folder(),
            "HA/Backups"
        );
        assert_eq!(field(&format!("{SITE}folder = \"a//b\"")), "folder");
        assert_eq!(field("site = \"/x\""), "site");
        assert_eq!(field(&format!("{SITE}graph_url = \"nope\"")), "graph_url");
        assert_eq!(field(&format!("{SITE}library = \"\"")), "library");
        assert_eq!(
            config(&format!("{SITE}conflict = \"replace\"")).conflict,
            Conflict::Replace
        );
        assert!(
            toml::from_str::<SharePointConfig>(&format!(
                "tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\n{SITE}conflict = \"keep\""
            ))
            .is_err()
        );
        assert_eq!(
            field(&format!(
                "{SITE}certificate_key = \"/k.pem\"\ncertificate_thumbprint = \"D70D8355ACC328606104D8A6A0A0729A03EBA322\""
            )),
            "client_secret",
            "not both"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("abc~defghijklmnop"), "{debug}");
    }
}
