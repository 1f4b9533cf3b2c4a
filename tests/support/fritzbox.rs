//! A FRITZ!Box's TR-064 as `device_fetch` uses it, per `shared/reference/devices.md` and AVM's
//! TR-064 documents: `POST /upnp/control/deviceconfig` with
//! `SOAPACTION: "urn:dslforum-org:service:DeviceConfig:1#X_AVM-DE_GetConfigFile"` behind HTTP
//! Digest (MD5, `qop="auth"`, realm `F!Box SOAP-Auth`; 401 with the box's HTML body), the
//! export password in `NewX_AVM-DE_Password` (empty: SOAP fault 402 Invalid Args), answering
//! `NewX_AVM-DE_ConfigFileUrl` — a one-time download URL with a session id, valid for
//! `validity` (30 s on the box), whose host is `127.0.0.1` like the box's, served behind the
//! same Digest when `download_digest` is set. With `second_factor` set the action answers the
//! SOAP fault with UPnP error 866 "second factor authentication required" until
//! [`FakeFritzBox::confirm`] (the button press on the box).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

pub const REALM: &str = "F!Box SOAP-Auth";
pub const SOAP_ACTION: &str = "\"urn:dslforum-org:service:DeviceConfig:1#X_AVM-DE_GetConfigFile\"";
pub const FIRMWARE: &str = "154.07.57";

pub struct FritzState {
    pub user: String,
    pub password: String,
    pub second_factor: bool,
    pub validity: Duration,
    pub download_digest: bool,
    /// The `ar7cfg` body of the export (what a test changes).
    pub config: String,
    /// Exports served.
    pub exports: u64,
    /// Session ids handed out, with when, and whether used.
    pub sids: HashMap<String, (Instant, bool)>,
    pub nonce: u64,
    /// Export passwords received.
    pub export_passwords: Vec<String>,
    /// Every SOAP request's outcome, e.g. `866`, `ok`, `401`.
    pub calls: Vec<String>,
    pub downloads: Vec<String>,
}

#[derive(Clone)]
pub struct FakeFritzBox {
    /// `http://127.0.0.1:<port>` (the TR-064 port).
    pub base: String,
    pub port: u16,
    pub state: Arc<Mutex<FritzState>>,
}

type S = State<(Arc<Mutex<FritzState>>, u16)>;

impl FakeFritzBox {
    pub async fn start(user: &str, password: &str) -> FakeFritzBox {
        let state = Arc::new(Mutex::new(FritzState {
            user: user.into(),
            password: password.into(),
            second_factor: false,
            validity: Duration::from_secs(30),
            download_digest: true,
            config:
                "ar7cfg {\n        mode = dsldmode_router;\n        ethmode = ethmode_bridge;\n}"
                    .into(),
            exports: 0,
            sids: HashMap::new(),
            nonce: 0x5e1f_0000,
            export_passwords: Vec::new(),
            calls: Vec::new(),
            downloads: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/upnp/control/deviceconfig", post(soap))
            .route("/TR064/{file}", get(download))
            .with_state((state.clone(), port));
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeFritzBox {
            base: format!("http://127.0.0.1:{port}"),
            port,
            state,
        }
    }

    pub fn edit(&self, f: impl FnOnce(&mut FritzState)) {
        f(&mut self.state.lock().unwrap());
    }

    /// The user pressed the button on the box.
    pub fn confirm(&self) {
        self.edit(|s| s.second_factor = false);
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
}

fn md5_hex(s: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn param(header: &str, name: &str) -> Option<String> {
    // Values may hold commas only inside quotes; the fake's and the client's do not.
    header.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        let k = k.trim().trim_start_matches("Digest ").trim();
        (k == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn unauthorized(st: &mut FritzState) -> Response {
    st.nonce += 1;
    let challenge = format!(
        "Digest realm=\"{REALM}\", nonce=\"{:016X}\", algorithm=MD5, qop=\"auth\"",
        st.nonce
    );
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, challenge),
            (header::CONTENT_TYPE, "text/html".into()),
        ],
        "<HTML><HEAD><TITLE>401 Unauthorized (ERR_NONE)</TITLE></HEAD><BODY><H1>401 Unauthorized</H1><BR>ERR_NONE<HR><B>Webserver</B> Tue, 01 Dec 2026 10:00:00 GMT</BODY></HTML>",
    )
        .into_response()
}

/// Whether `headers` carry a valid Digest answer for `method` `uri` (and the nonce is ours).
fn authorized(st: &FritzState, method: &Method, headers: &HeaderMap) -> bool {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !auth.starts_with("Digest ") {
        return false;
    }
    let get = |n| param(auth, n).unwrap_or_default();
    let ha1 = md5_hex(&format!("{}:{REALM}:{}", st.user, st.password));
    let ha2 = md5_hex(&format!("{}:{}", method.as_str(), get("uri")));
    let want = md5_hex(&format!(
        "{ha1}:{}:{}:{}:{}:{ha2}",
        get("nonce"),
        get("nc"),
        get("cnonce"),
        get("qop")
    ));
    get("username") == st.user
        && get("realm") == REALM
        && get("response") == want
        && get("nonce") == format!("{:016X}", st.nonce)
}

fn fault(code: u16, description: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/xml; charset=\"utf-8\"")],
        format!(
            "<?xml version=\"1.0\"?>\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\">\n<s:Body>\n<s:Fault>\n<faultcode>s:Client</faultcode>\n<faultstring>UPnPError</faultstring>\n<detail>\n<UPnPError xmlns=\"urn:dslforum-org:control-1-0\">\n<errorCode>{code}</errorCode>\n<errorDescription>{description}</errorDescription>\n</UPnPError>\n</detail>\n</s:Fault>\n</s:Body>\n</s:Envelope>\n"
        ),
    )
        .into_response()
}

/// The export's last line carries a checksum of its content (the same content, the same line).
fn checksum(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let a = s.find(open)? + open.len();
    let b = s[a..].find(close)? + a;
    Some(&s[a..b])
}

async fn soap(State((s, port)): S, headers: HeaderMap, body: String) -> Response {
    let mut st = s.lock().unwrap();
    if !authorized(&st, &Method::POST, &headers) {
        st.calls.push("401".into());
        return unauthorized(&mut st);
    }
    let action = headers
        .get("soapaction")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if action != SOAP_ACTION
        || !body.contains(
            "<u:X_AVM-DE_GetConfigFile xmlns:u=\"urn:dslforum-org:service:DeviceConfig:1\">",
        )
    {
        st.calls.push("401-action".into());
        return fault(401, "Invalid Action");
    }
    let password = between(&body, "<NewX_AVM-DE_Password>", "</NewX_AVM-DE_Password>")
        .unwrap_or_default()
        .to_string();
    if password.is_empty() {
        st.calls.push("402".into());
        return fault(402, "Invalid Args");
    }
    st.export_passwords.push(password);
    if st.second_factor {
        st.calls.push("866".into());
        return fault(866, "second factor authentication required");
    }
    st.calls.push("ok".into());
    let sid = format!(
        "{:016x}",
        0x9a3c_17e2_55d0_0000u64 + st.sids.len() as u64 + 1
    );
    st.sids.insert(sid.clone(), (Instant::now(), false));
    // The box names its TLS port over https; the fake serves the download on its one port.
    let url = format!("http://127.0.0.1:{port}/TR064/FRITZ.Box_7590.export?sid={sid}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=\"utf-8\"")],
        format!(
            "<?xml version=\"1.0\"?>\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\">\n<s:Body>\n<u:X_AVM-DE_GetConfigFileResponse xmlns:u=\"urn:dslforum-org:service:DeviceConfig:1\">\n<NewX_AVM-DE_ConfigFileUrl>{}</NewX_AVM-DE_ConfigFileUrl>\n</u:X_AVM-DE_GetConfigFileResponse>\n</s:Body>\n</s:Envelope>\n",
            url.replace('&', "&amp;")
        ),
    )
        .into_response()
}

async fn download(
    State((s, _)): S,
    Path(file): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut st = s.lock().unwrap();
    if st.download_digest && !authorized(&st, &Method::GET, &headers) {
        return unauthorized(&mut st);
    }
    let sid = q.get("sid").cloned().unwrap_or_default();
    let validity = st.validity;
    let fresh = match st.sids.get_mut(&sid) {
        Some((at, used)) if !*used && at.elapsed() <= validity => {
            *used = true;
            true
        }
        _ => false,
    };
    st.downloads
        .push(format!("{file} {}", if fresh { "ok" } else { "refused" }));
    if !fresh {
        return (
            StatusCode::NOT_FOUND,
            "<HTML><BODY>404 Not Found</BODY></HTML>",
        )
            .into_response();
    }
    st.exports += 1;
    let text = format!(
        "**** FRITZ!Box 7590 CONFIGURATION EXPORT\nPassword=$$$$Q5KDGSB3CU2ZCZQTBNAD6WXQXCLLVCIA4XFYIS3Q4EUT4WYQNB1PW3\nFirmwareVersion={FIRMWARE}\nCONFIG_INSTALL_TYPE=iks_16MB_xilinx_4eth_2ab_isdn_nt_te_pots_wlan_usb_host_dect_plc_64415\nOEM=avm\nLanguage=de\nNoChecks=yes\n**** CFGFILE:ar7.cfg\n{}\n**** END OF EXPORT {:08X} ****\n",
        st.config,
        checksum(&st.config)
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        text,
    )
        .into_response()
}

impl FakeFritzBox {
    /// A download URL as the action hands out (for a generic Digest device).
    pub fn issue_url(&self) -> String {
        let mut st = self.state.lock().unwrap();
        let sid = format!(
            "{:016x}",
            0x7b00_0000_0000_0000u64 + st.sids.len() as u64 + 1
        );
        st.sids.insert(sid.clone(), (Instant::now(), false));
        format!("{}/TR064/FRITZ.Box_7590.export?sid={sid}", self.base)
    }

    /// The session ids handed out.
    pub fn sids(&self) -> Vec<String> {
        self.state.lock().unwrap().sids.keys().cloned().collect()
    }
}
