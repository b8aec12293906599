//! A real browser for the tests: Debian's headless Chromium driven through its chromedriver
//! (WebDriver) with `fantoccini`. Each browser has a chromedriver of its own on a free port, in
//! a process group of its own, and a fresh profile directory; dropping it kills the whole
//! group (chromedriver and every Chromium process), also when the test failed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A phone's window (a common 390 × 844 CSS-pixel screen).
pub const PHONE: (u32, u32) = (390, 844);
/// A desk's window.
pub const DESK: (u32, u32) = (1280, 900);

pub struct Browser {
    pub client: Client,
    // Dropped after the client: kills the driver and Chromium whatever happened.
    _driver: DriverGuard,
    _profile: tempfile::TempDir,
    /// The test's name: screenshots are named after it.
    name: String,
}

impl Browser {
    /// Starts chromedriver and a Chromium session with a `size` window.
    pub async fn start(name: &str, size: (u32, u32)) -> Self {
        let port = free_port();
        let mut command = Command::new(chromedriver());
        command.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        // A process group of its own, so that Drop can kill Chromium along with its driver.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().unwrap_or_else(|e| {
            panic!(
                "chromedriver does not start ({e}): apt-get install --no-install-recommends chromium chromium-driver"
            )
        });
        let profile = tempfile::tempdir().expect("a profile directory");
        let driver = DriverGuard(driver);
        let url = format!("http://127.0.0.1:{port}");
        testkit::eventually("chromedriver answers", Duration::from_secs(20), || async {
            let status = reqwest::get(format!("{url}/status")).await.ok()?;
            status.status().is_success().then_some(())
        })
        .await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={},{}", size.0, size.1),
                ]
            }),
        );
        let client = ClientBuilder::rustls()
            .expect("TLS roots")
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a Chromium session");
        let me = Self { client, _driver: driver, _profile: profile, name: name.to_string() };
        me.client.set_window_size(size.0, size.1).await.expect("window size");
        me
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Fills the login form of the current page and submits it with the keyboard (Enter).
    pub async fn log_in(&self, (user, password): (&str, &str)) {
        self.client.find(Locator::Id("user")).await.unwrap().send_keys(user).await.unwrap();
        let field = self.client.find(Locator::Id("password")).await.unwrap();
        field.send_keys(password).await.unwrap();
        field.send_keys("\u{E007}").await.unwrap(); // Enter
        self.wait_path_not("/login").await;
    }

    /// The path of the current page.
    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    /// Waits until the current page is not at `path` (a form was submitted).
    pub async fn wait_path_not(&self, path: &str) {
        testkit::eventually(&format!("leaving {path}"), Duration::from_secs(20), || async {
            (self.path().await != path).then_some(())
        })
        .await
    }

    /// The visible text of the page.
    pub async fn text(&self) -> String {
        self.client.find(Locator::Css("body")).await.unwrap().text().await.unwrap()
    }

    /// Saves a PNG of the window as `target/screenshots/<test>-<step>.png`; returns its path.
    pub async fn screenshot(&self, step: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = testkit::prometheus::repo_root().join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{step}.png", self.name));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// Ends the WebDriver session (closing Chromium); the driver's group is killed on drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// chromedriver's process group, killed when dropped (also when a test panics).
struct DriverGuard(Child);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

/// SIGKILL to the whole group (chromedriver leads it; Chromium's processes are in it).
fn kill_group(driver: &mut Child) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", driver.id())]).status();
    let _ = driver.kill();
    let _ = driver.wait();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into())
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}
