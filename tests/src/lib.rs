//! Harness for end-to-end tests: finds the workspace's built binaries, runs
//! them as child processes on free loopback ports, and waits for them to be
//! ready with a deadline (never a fixed sleep). Children are killed when
//! their handle drops, so a failing test leaves no stray servers.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub mod otlp;
pub mod rogue;
pub mod s3;
pub mod serving;
pub mod tls;

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Path of a workspace binary built by `cargo build --workspace --bins`
/// (`--release` for optimised callers such as the benchmarks).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let target = if target.is_absolute() {
        target
    } else {
        workspace_root().join(target)
    };
    let path = target.join(profile).join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins{}` first",
        path.display(),
        if profile == "release" {
            " --release"
        } else {
            ""
        }
    );
    Ok(path)
}

/// A loopback address with a port that was free a moment ago and that this
/// process has not handed out before.
///
/// The kernel may give a port just released by one `bind(…:0)` to the next,
/// so two calls in a row (a controller's REST and gRPC ports, or two tests
/// starting at once) could otherwise get the same port, and the second
/// process to bind it exits with "address in use".
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(addr.port()) {
            return Ok(addr);
        }
    }
}

/// A process's resident memory now and at its peak (VmRSS, VmHWM), in MiB.
pub fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// The value of the first line of a Prometheus text rendering that starts
/// with `name` (a counter, a gauge, or a summary's `_count`).
pub fn metric_value(rendering: &str, name: &str) -> Option<f64> {
    rendering
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
}

/// A process's Prometheus metrics, from its `/metrics` at `base_url`.
pub async fn scrape(base_url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{base_url}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The real SmolLM2 model, when it has been fetched.
pub fn test_model() -> Option<PathBuf> {
    let path = std::env::var_os("FLOTILLA_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    path.exists().then_some(path)
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed on drop.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Checks the child is still running.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `flotilla-controller` process.
pub struct ControllerProcess {
    pub process: ChildGuard,
    pub rest_url: String,
    pub grpc_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The CA its TLS certificate chains to, when it serves TLS.
    pub ca_cert: Option<PathBuf>,
}

/// Runs `start` with two fresh loopback ports, and again with new ones when
/// the process could not bind them: a port free when [`free_addr`] looked
/// can be taken before the child binds it (by another test's outgoing
/// connection, say), and that is no failure of the code under test.
async fn on_fresh_ports<T, F, Fut>(mut start: F) -> anyhow::Result<T>
where
    F: FnMut(SocketAddr, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match start(free_addr()?, free_addr()?).await {
            Err(error)
                if attempts < 3 && format!("{error:#}").contains("Address already in use") =>
            {
                eprintln!("retrying on other ports: {error:#}");
            }
            outcome => return outcome,
        }
    }
}

/// The last `lines` lines of a log, for an error message.
fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!("its last log lines:\n{}", all[start..].join("\n"))
}

impl ControllerProcess {
    /// Starts the controller with `--data-dir` and free ports, plus `extra`
    /// arguments, and waits for `/readyz`.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(data_dir, extra, &[], None).await
    }

    /// Like [`ControllerProcess::start`], with extra environment variables
    /// and, optionally, stderr (the logs) written to a file.
    pub async fn start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        on_fresh_ports(|http, grpc| {
            Self::start_on(data_dir, http, grpc, extra, env, log_file, None)
        })
        .await
    }

    /// Starts the controller serving REST and gRPC over TLS with `tls`'s
    /// server certificate; [`cli`](crate::serving::cli) then trusts its CA.
    pub async fn start_tls(data_dir: &Path, tls: &tls::TestTls) -> anyhow::Result<Self> {
        on_fresh_ports(|http, grpc| Self::start_on(data_dir, http, grpc, &[], &[], None, Some(tls)))
            .await
    }

    /// Starts the controller again on the same data directory and ports
    /// (after [`ChildGuard::kill`]), so that agents find it where it was.
    pub async fn restart(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.restart_with_env(extra, &[]).await
    }

    /// [`ControllerProcess::restart`] with environment variables.
    pub async fn restart_with_env(
        &mut self,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.process.kill()?;
        let http = self
            .rest_url
            .trim_start_matches("http://")
            .parse::<SocketAddr>()?;
        *self =
            Self::start_on(&self.data_dir, http, self.grpc_addr, extra, env, None, None).await?;
        Ok(())
    }

    async fn start_on(
        data_dir: &Path,
        http: SocketAddr,
        grpc: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
        log_file: Option<&Path>,
        tls: Option<&tls::TestTls>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary("flotilla-controller")?);
        let mut client = reqwest::Client::builder();
        let mut scheme = "http";
        if let Some(tls) = tls {
            command
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key);
            client = client.add_root_certificate(tls.ca_certificate()?);
            scheme = "https";
        }
        command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http")
            .arg(http.to_string())
            .arg("--grpc")
            .arg(grpc.to_string())
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied());
        // Its logs go to the caller's file, or are passed through to the
        // test's own output and kept, so that an early exit can say why.
        let echoed = std::sync::Arc::new(Mutex::new(String::new()));
        match log_file {
            Some(path) => command.stderr(std::fs::File::create(path)?),
            None => command.stderr(Stdio::piped()),
        };
        let mut process = ChildGuard::spawn("flotilla-controller", &mut command)?;
        if let Some(stderr) = process.child.stderr.take() {
            let echoed = echoed.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    eprintln!("{line}");
                    let mut echoed = echoed.lock().unwrap_or_else(PoisonError::into_inner);
                    echoed.push_str(&line);
                    echoed.push('\n');
                }
            });
        }
        let rest_url = format!("{scheme}://{http}");
        let client = client.build()?;
        let ready_url = format!("{rest_url}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Err(error) = process.ensure_running() {
                let log = match log_file {
                    Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
                    // The child has exited: give the reader a moment to
                    // drain what it wrote last.
                    None => {
                        let deadline = Instant::now() + Duration::from_secs(2);
                        while std::sync::Arc::strong_count(&echoed) > 1 && Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        echoed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .clone()
                    }
                };
                return Err(error.context(log_tail(&log, 40)));
            }
            if let Ok(response) = client.get(&ready_url).send().await
                && response.status().is_success()
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "controller not ready after 60s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            process,
            rest_url,
            grpc_addr: grpc,
            data_dir: data_dir.to_path_buf(),
            ca_cert: tls.map(|tls| tls.ca.clone()),
        })
    }

    pub fn admin_token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.data_dir.join("admin.token"))?
            .trim()
            .to_owned())
    }
}

/// Runs the `flotilla` CLI against a controller and returns its output.
pub fn flotilla(rest_url: &str, token: &str, home: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(binary("flotilla")?)
        .args(args)
        .env("FLOTILLA_URL", rest_url)
        .env("FLOTILLA_TOKEN", token)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .output()?;
    Ok(output)
}

/// The blake3 digest of a file computed by an independent implementation:
/// the `blake3` Python package (from `scripts/ensure-python.sh`).
pub fn independent_blake3(path: &Path) -> Option<String> {
    let python = std::env::var_os("FLOTILLA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let script = "import sys, blake3\nh = blake3.blake3()\nf = open(sys.argv[1], 'rb')\nfor chunk in iter(lambda: f.read(1 << 20), b''):\n    h.update(chunk)\nprint(h.hexdigest())";
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl ChildGuard {
    /// Asks the process to stop (SIGTERM) and waits for it to exit, so that
    /// it can flush what it buffers (logs, traces).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `flotilla-agent` to completion (for runs that must fail, such as a
/// refused enrolment) with `--data-dir data_dir` and `args`, and returns its
/// output. Bounded by a deadline so that a hung
/// agent fails the test instead of stalling it.
pub async fn run_agent(data_dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(binary("flotilla-agent")?);
    let (serving, _, _) = serving_args(args)?;
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .args(serving)
        .env_remove("FLOTILLA_BOOTSTRAP_TOKEN")
        .env_remove("FLOTILLA_CONTROLLER")
        .env_remove("FLOTILLA_NODE_NAME")
        .env_remove("FLOTILLA_DATA_DIR")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("flotilla-agent did not exit within {deadline:?}"))?
        .map_err(|e| anyhow::anyhow!("cannot run flotilla-agent: {e}"))
}

/// `--http` and `--grpc` on free loopback ports unless `args` name them
/// (agents default to fixed ports, which several agents on one machine, or
/// tests running in parallel, cannot share); and the addresses in use.
fn serving_args(
    args: &[&str],
) -> anyhow::Result<(Vec<String>, Option<SocketAddr>, Option<SocketAddr>)> {
    let mut extra = Vec::new();
    let mut addresses = [None, None];
    for (index, flag) in ["--http", "--grpc"].into_iter().enumerate() {
        match args.iter().position(|arg| *arg == flag) {
            Some(at) => {
                addresses[index] = args.get(at + 1).and_then(|addr| addr.parse().ok());
            }
            None => {
                let addr = free_addr()?;
                extra.extend([flag.to_owned(), addr.to_string()]);
                addresses[index] = Some(addr);
            }
        }
    }
    Ok((extra, addresses[0], addresses[1]))
}

/// A running `flotilla-agent` process, its logs in `DATA_DIR/agent.log`.
pub struct AgentProcess {
    pub process: ChildGuard,
    pub data_dir: PathBuf,
    /// The OpenAI/Ollama-compatible HTTP API (`--http`).
    pub http_addr: Option<SocketAddr>,
    /// The gRPC inference API (`--grpc`).
    pub grpc_addr: Option<SocketAddr>,
}

impl AgentProcess {
    /// Starts `flotilla-agent --data-dir data_dir args…` in the background,
    /// serving inference on free loopback ports unless `args` say where.
    pub fn start(data_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(data_dir, args, &[])
    }

    /// [`AgentProcess::start`] with extra environment variables.
    pub fn start_with_env(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("agent.log"))?;
        let (serving, http_addr, grpc_addr) = serving_args(args)?;
        let mut command = Command::new(binary("flotilla-agent")?);
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .args(&serving)
            .env_remove("FLOTILLA_BOOTSTRAP_TOKEN")
            .env_remove("FLOTILLA_CONTROLLER")
            .env_remove("FLOTILLA_NODE_NAME")
            .env_remove("FLOTILLA_DATA_DIR")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(log);
        Ok(Self {
            process: ChildGuard::spawn("flotilla-agent", &mut command)?,
            data_dir: data_dir.to_path_buf(),
            http_addr,
            grpc_addr,
        })
    }

    /// The agent's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }
}
