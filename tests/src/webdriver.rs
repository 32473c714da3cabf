//! A real browser for the console's tests: Debian's `chromium`, headless, driven by
//! `chromedriver` over the W3C WebDriver HTTP protocol (a few commands, over a plain HTTP/1.1
//! connection to chromedriver on loopback: no client library needed).
//!
//! chromedriver starts in a process group of its own with a fresh `--user-data-dir`; on drop
//! the session is closed, the group is killed, and every process whose command line names the
//! profile directory (chromium and its helpers) is proven gone.

use crate::sys;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session.
pub struct Browser {
    child: Option<Child>,
    port: u16,
    session: String,
    profile: TempDir,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// A WebDriver command that failed: its HTTP status and WebDriver's error.
#[derive(Debug)]
pub struct WdError(pub String);

impl Browser {
    /// Starts chromedriver and a headless chromium session (window 1400×900). The heads'
    /// certificates are accepted through `acceptInsecureCerts` (the tests' heads use fresh CAs).
    pub fn start() -> Browser {
        let profile = TempDir::with_prefix("cw-chromium-").expect("profile dir");
        let port = crate::free_port(std::net::Ipv4Addr::LOCALHOST);
        let log = std::fs::File::create(profile.path().join("chromedriver.out")).expect("chromedriver output");
        let mut cmd = Command::new("chromedriver");
        // The log path puts the profile directory on chromedriver's command line too (see Drop).
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", profile.path().join("chromedriver.log").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("chromedriver (Debian package chromium-driver)");
        let mut b = Browser { child: Some(child), port, session: String::new(), profile };
        crate::poll_until("chromedriver answering", Duration::from_secs(20), || {
            b.http("GET", "/status", None).is_ok_and(|v| v["value"]["ready"] == true)
        });
        let data_dir = b.profile.path().join("profile");
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": true,
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1400,900",
                        format!("--user-data-dir={}", data_dir.display()),
                    ],
                },
            }},
        });
        let v = b.http("POST", "/session", Some(&caps)).unwrap_or_else(|e| panic!("new session: {e:?}"));
        b.session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session id in {v}")).to_string();
        b
    }

    /// One HTTP exchange with chromedriver; WebDriver's `value` on success.
    fn http(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| WdError(e.to_string()))?;
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| WdError(e.to_string()))?;
        // chromedriver keeps the connection open whatever the request says: read the headers,
        // then the body by its length.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut buf).map_err(|e| WdError(e.to_string()))?;
            if n == 0 {
                return Err(WdError(format!("connection closed: {}", String::from_utf8_lossy(&raw))));
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let len = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
        });
        let mut rest = raw[head_end + 4..].to_vec();
        match len {
            Some(len) => {
                while rest.len() < len {
                    let n = s.read(&mut buf).map_err(|e| WdError(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    rest.extend_from_slice(&buf[..n]);
                }
            }
            None => {
                let _ = s.read_to_end(&mut rest);
            }
        }
        let rest = String::from_utf8_lossy(&rest).to_string();
        let chunked = len.is_none() && head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        let body = if chunked { dechunk(&rest) } else { rest };
        let v: Value = serde_json::from_str(&body).map_err(|e| WdError(format!("{status}: {e}: {body}")))?;
        if status != 200 {
            return Err(WdError(format!("{status}: {}", v["value"])));
        }
        Ok(v)
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        self.http(method, &format!("/session/{}{path}", self.session), body).map(|v| v["value"].clone())
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url }))).unwrap_or_else(|e| panic!("open {url}: {e:?}"));
    }

    /// Loads the page again (returns once the document has loaded, not its data).
    pub fn refresh(&self) {
        self.cmd("POST", "/refresh", Some(&json!({}))).unwrap_or_else(|e| panic!("refresh: {e:?}"));
    }

    /// The first element `css` selects, if any.
    pub fn find(&self, css: &str) -> Option<Element> {
        let v = self.cmd("POST", "/element", Some(&json!({ "using": "css selector", "value": css }))).ok()?;
        v[ELEMENT].as_str().map(|s| Element(s.to_string()))
    }

    /// The element `css` selects, waiting up to 10 s for it.
    pub fn wait_find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            if Instant::now() > deadline {
                panic!("no element {css:?} in the page within 10 s; {}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks what `css` selects (as a user does: the element must be visible).
    pub fn click(&self, css: &str) {
        let e = self.wait_find(css);
        self.cmd("POST", &format!("/element/{}/click", e.0), Some(&json!({})))
            .unwrap_or_else(|err| panic!("click {css:?}: {err:?}"));
    }

    /// Types `text` into what `css` selects (after clearing it).
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_find(css);
        let _ = self.cmd("POST", &format!("/element/{}/clear", e.0), Some(&json!({})));
        self.cmd("POST", &format!("/element/{}/value", e.0), Some(&json!({ "text": text })))
            .unwrap_or_else(|err| panic!("type into {css:?}: {err:?}"));
    }

    /// Runs `script` (a function body; `return` its answer) in the page.
    pub fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(&json!({ "script": script, "args": [] })))
            .unwrap_or_else(|e| panic!("script {script:?}: {e:?}"))
    }

    /// Waits until `script` answers `true` in the page.
    pub fn wait_js(&self, what: &str, within: Duration, script: &str) -> Duration {
        let start = Instant::now();
        loop {
            if self.js(script) == Value::Bool(true) {
                return start.elapsed();
            }
            if start.elapsed() > within {
                panic!("{what}: not so in the page within {within:?}; {}", self.describe());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens the web console of the head at `head_url` and logs in with `token`.
    pub fn console_login(&self, head_url: &str, token: &str) {
        self.goto(&format!("{head_url}/console/"));
        self.wait_find("#login:not([hidden]) #token");
        self.type_into("#token", token);
        self.click("#login-button");
        self.wait_js(
            "the console shown after login",
            Duration::from_secs(10),
            "return !document.getElementById('app').hidden;",
        );
    }

    /// Reloads the console on its node page and waits until all `n` nodes are in its table and
    /// the first rows are drawn: the time that took.
    pub fn console_node_page_load(&self, n: usize) -> Duration {
        let ready = format!(
            "return !!window.consoleState && window.consoleState.view.length === {n} && \
             document.querySelectorAll('#nodes-rows .row:not([hidden])').length > 0;"
        );
        self.js("history.replaceState(null, '', '#nodes'); return true;");
        let start = Instant::now();
        self.refresh();
        self.wait_js("the node page after a reload", Duration::from_secs(120), &ready);
        start.elapsed()
    }

    /// Where the page is, its text and the browser's console messages (for failures).
    pub fn describe(&self) -> String {
        let page = self
            .cmd("POST", "/execute/sync", Some(&json!({ "script": "return location.href + ' | ' + document.body.innerText.slice(0, 2000);", "args": [] })))
            .map(|v| v.to_string())
            .unwrap_or_else(|e| format!("{e:?}"));
        let logs =
            self.cmd("POST", "/se/log", Some(&json!({ "type": "browser" }))).map(|v| v.to_string()).unwrap_or_default();
        format!("page: {page}; browser log: {logs}")
    }

    /// The text of what `css` selects ("" when nothing is).
    pub fn text(&self, css: &str) -> String {
        let q = serde_json::to_string(css).unwrap_or_default();
        self.js(&format!("const e = document.querySelector({q}); return e ? e.textContent : '';"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a screenshot of the window as `dir/name.png`.
    pub fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let v = self.cmd("GET", "/screenshot", None).unwrap_or_else(|e| panic!("screenshot: {e:?}"));
        let png = clusterware_shared::agent::base64_decode(v.as_str().expect("base64 screenshot"))
            .expect("a screenshot in standard base64");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::create_dir_all(dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.http("DELETE", &format!("/session/{}", self.session), None);
        }
        if let Some(mut c) = self.child.take() {
            sys::killpg(c.id(), Signal::SIGKILL);
            let _ = c.wait();
        }
        // chromium and its helpers name the profile directory on their command lines.
        let marker = self.profile.path().to_string_lossy().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = crate::processes_named(&marker);
            if left.is_empty() {
                break;
            }
            for pid in &left {
                sys::kill(*pid, Signal::SIGKILL);
            }
            if Instant::now() > deadline {
                if !std::thread::panicking() {
                    panic!("browser processes {left:?} did not end");
                }
                eprintln!("browser processes {left:?} did not end");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The body of a chunked HTTP answer.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks() {
        assert_eq!(super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
