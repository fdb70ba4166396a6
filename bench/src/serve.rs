//! `--serve`: a `metrum serve` child process for the length of a benchmark. The executable is
//! the one running now (`std::env::current_exe()`), so `metrum bench run --serve "…"` benches
//! the very binary it is. The child gets `serve <args> --port <free port>`, its output goes to
//! `server.log` in the run directory (keeping the progress bar readable), and it is stopped
//! with SIGTERM (a graceful drain), then killed if it lingers.

use crate::client::{Readiness, readiness};
use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long a stopped server may drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub struct ServerProcess {
    child: Child,
    pub base_url: String,
    pub log: PathBuf,
}

/// The child's argument list: `serve`, the user's words, then the port.
pub fn serve_command_args(serve_args: &str, port: u16) -> Vec<String> {
    let mut args = vec!["serve".to_string()];
    args.extend(serve_args.split_whitespace().map(str::to_string));
    args.push("--port".to_string());
    args.push(port.to_string());
    args
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl ServerProcess {
    /// Starts `program serve <serve_args> --port P` and waits until `/health` answers.
    pub async fn start(
        program: &Path,
        serve_args: &str,
        log_dir: &Path,
        wait: Duration,
        http: &reqwest::Client,
    ) -> Result<Self> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let log = log_dir.join("server.log");
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let port = free_port()?;
        let child = Command::new(program)
            .args(serve_command_args(serve_args, port))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut server = ServerProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match readiness(http, &server.base_url).await {
                Readiness::Ready => return Ok(server),
                Readiness::Failed(why) => {
                    let log = server.log.clone();
                    server.stop().await?;
                    bail!(
                        "the server answers /health with \"{why}\"; see {}",
                        log.display()
                    );
                }
                Readiness::NotYet => {}
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the server exited ({status}) before /health answered; see {}",
                    server.log.display()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                let log = server.log.clone();
                server.stop().await?;
                bail!(
                    "no /health within {:.0} s; see {}",
                    wait.as_secs_f64(),
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `STOP_GRACE` (30 s).
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // The child may already be gone; that is what we want anyway.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::healthy;

    #[test]
    fn command_line_is_serve_then_args_then_port() {
        assert_eq!(
            serve_command_args(" --model tiny  --max-num-seqs 4 ", 1234),
            [
                "serve",
                "--model",
                "tiny",
                "--max-num-seqs",
                "4",
                "--port",
                "1234"
            ]
        );
        assert!(free_port().unwrap() > 0);
    }

    /// A stand-in `metrum` executable: `serve ... --port P` answers /health on P until SIGTERM.
    const FAKE_METRUM: &str = r#"#!/usr/bin/env python3
import http.server, signal, sys
args = sys.argv[1:]
assert args[0] == "serve", args
port = int(args[args.index("--port") + 1])
fail = "--fail" in args
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if fail:
            body = b'{"status": "failed: the model failed to load"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Health)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print("serving", args, flush=True)
server.serve_forever()
"#;

    /// A fresh directory holding [`FAKE_METRUM`] as an executable `fake-metrum`.
    fn fake_metrum(case: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("metrum-bench-serve-{case}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("fake-metrum");
        std::fs::write(&exe, FAKE_METRUM).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, exe)
    }

    #[tokio::test]
    async fn serve_starts_the_executable_waits_for_health_and_stops_it_with_sigterm() {
        let (dir, exe) = fake_metrum("ok");
        let http = reqwest::Client::new();
        let server =
            ServerProcess::start(&exe, "--model tiny", &dir, Duration::from_secs(30), &http)
                .await
                .unwrap();
        let base = server.base_url.clone();
        assert!(healthy(&http, &base).await);
        server.stop().await.unwrap();
        assert!(
            !healthy(&http, &base).await,
            "the server is gone after stop"
        );
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
        assert!(
            log.contains("'serve', '--model', 'tiny', '--port'"),
            "{log}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A server that is up but whose model failed (Metrum's 503 `failed: …`) never becomes
    /// ready: the wait ends at once with its reason instead of at the timeout.
    #[tokio::test]
    async fn a_server_that_reports_a_failed_load_is_an_error_at_once() {
        let (dir, exe) = fake_metrum("fail");
        let http = reqwest::Client::new();
        let started = std::time::Instant::now();
        let result =
            ServerProcess::start(&exe, "--fail", &dir, Duration::from_secs(60), &http).await;
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("failed: the model failed to load"),
            "{message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "it waited for the timeout"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_child_that_dies_before_health_is_an_error_not_a_hang() {
        let dir = std::env::temp_dir().join(format!("metrum-bench-serve-{}", std::process::id()));
        let http = reqwest::Client::new();
        let started = ServerProcess::start(
            Path::new("/bin/false"),
            "",
            &dir,
            Duration::from_secs(20),
            &http,
        )
        .await;
        let message = started.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("exited"), "{message}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
