//! A real S3 server on loopback for the object store tests: moto's
//! (`moto[server]`, which `scripts/ensure-python.sh` installs into .venv),
//! started on a free port and killed on drop. It checks no signatures, so
//! buckets are made with a plain `PUT /bucket`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{ChildGuard, free_addr, wait_until, workspace_root};

pub struct MotoServer {
    _process: ChildGuard,
    /// `http://127.0.0.1:PORT`, for `--s3-endpoint`.
    pub endpoint: String,
}

/// The environment the controller's S3 client needs besides the endpoint
/// (moto accepts any credentials).
pub const S3_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "flotilla-test"),
    ("AWS_SECRET_ACCESS_KEY", "flotilla-test-secret"),
    ("AWS_REGION", "us-east-1"),
];

/// The venv's Python when it has moto. Under `scripts/test.sh` (which sets
/// `FLOTILLA_PYTHON`) a missing moto is an error, never a skip.
pub fn python_with_moto() -> anyhow::Result<Option<PathBuf>> {
    let required = std::env::var_os("FLOTILLA_PYTHON");
    let python = required
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let has_moto = Command::new(&python)
        .args(["-c", "import moto.server, flask"])
        .output()
        .is_ok_and(|output| output.status.success());
    match (has_moto, required) {
        (true, _) => Ok(Some(python)),
        (false, Some(_)) => anyhow::bail!(
            "{} lacks moto[server]; run scripts/ensure-python.sh",
            python.display()
        ),
        (false, None) => Ok(None),
    }
}

impl MotoServer {
    /// Starts moto's S3 server and waits until it answers.
    pub async fn start(python: &PathBuf) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let process = ChildGuard::spawn(
            "moto_server",
            Command::new(python)
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(addr.port().to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )?;
        let endpoint = format!("http://{addr}");
        let probe = format!("{endpoint}/moto-api/");
        wait_until("moto's S3 server", Duration::from_secs(60), || async {
            reqwest::get(&probe).await.is_ok()
        })
        .await?;
        Ok(Self {
            _process: process,
            endpoint,
        })
    }

    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
