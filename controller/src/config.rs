//! Controller configuration from flags, environment variables and a TOML
//! file, in that order of precedence, with defaults for a single box:
//! SQLite and objects in `./flotilla-data`, REST on 127.0.0.1:8080, gRPC on
//! 127.0.0.1:50051.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "./flotilla-data";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:50051";
/// Uploads above this are refused (a 70B model in F16 is ~140 GB).
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 256 * 1024 * 1024 * 1024;

/// Flags (and their environment variables) of `flotilla-controller`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ControllerArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database, local objects, keys and the admin token.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the REST API.
    #[arg(long, env = "FLOTILLA_HTTP_ADDR")]
    pub http: Option<SocketAddr>,
    /// Address of the gRPC API (agents connect here).
    #[arg(long, env = "FLOTILLA_GRPC_ADDR")]
    pub grpc: Option<SocketAddr>,
    /// `postgres://…` for production; default: SQLite in the data directory.
    #[arg(long, env = "FLOTILLA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// `s3://bucket/prefix` or `file:///dir`; default: `objects/` in the data directory.
    #[arg(long, env = "FLOTILLA_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// JWT key file (TOML); default: `auth-keys.toml` in the data directory, created on first start.
    #[arg(long, env = "FLOTILLA_JWT_KEYS")]
    pub jwt_keys: Option<PathBuf>,
    /// Audience that API tokens must carry.
    #[arg(long, env = "FLOTILLA_JWT_AUDIENCE")]
    pub audience: Option<String>,
    /// Largest accepted artifact upload, in bytes.
    #[arg(long, env = "FLOTILLA_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// New nodes start `pending` until an operator approves them
    /// (`flotilla node approve NAME`); otherwise they start `active`.
    #[arg(long, env = "FLOTILLA_REQUIRE_NODE_APPROVAL", num_args = 0..=1,
        default_missing_value = "true")]
    pub require_node_approval: Option<bool>,
    /// How often agents heartbeat, in milliseconds (default 5000).
    #[arg(long, env = "FLOTILLA_HEARTBEAT_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub heartbeat_interval_ms: Option<u64>,
    /// The REST root agents download artifacts from, e.g.
    /// `https://controller.example:8080`; default: `http://` (or `https://`
    /// with TLS) + the REST address.
    #[arg(long, env = "FLOTILLA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Serve REST and gRPC over TLS with this certificate chain (PEM);
    /// needs --tls-key.
    #[arg(long, env = "FLOTILLA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "FLOTILLA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that issues node certificates; needs
    /// --node-ca-key. Default: `node-ca.pem` in the data directory, created
    /// on first start. Give the same CA to every replica.
    #[arg(long, env = "FLOTILLA_NODE_CA_CERT", requires = "node_ca_key")]
    pub node_ca_cert: Option<PathBuf>,
    /// The node CA's private key (PEM); default: `node-ca.key` (mode 0600)
    /// in the data directory.
    #[arg(long, env = "FLOTILLA_NODE_CA_KEY", requires = "node_ca_cert")]
    pub node_ca_key: Option<PathBuf>,
    /// Lifetime of the node certificates issued at enrolment and renewed
    /// with each credential, e.g. 24h (the default), 90m, 3600s; 1m to 90d.
    #[arg(long, env = "FLOTILLA_NODE_CERT_TTL", value_parser = crate::auth::node_ca::parse_ttl)]
    pub node_cert_ttl: Option<std::time::Duration>,
    /// Lifetime in hours of the admin token written to `admin.token` when
    /// it is missing (default 24). Mint longer-lived tokens for automation
    /// with `flotilla token create`; they can be listed and revoked.
    #[arg(long, env = "FLOTILLA_FIRST_ADMIN_TOKEN_TTL_HOURS", value_parser = clap::value_parser!(u64).range(1..=8784))]
    pub first_admin_token_ttl_hours: Option<u64>,
    /// The S3 API's URL for an S3-compatible server (MinIO, Ceph, moto),
    /// e.g. `http://minio:9000`; default: AWS (or `AWS_ENDPOINT`). An
    /// `http://` endpoint is allowed because it is named explicitly.
    #[arg(long, env = "FLOTILLA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// The S3 region; default: `AWS_REGION`, else `us-east-1`.
    #[arg(long, env = "FLOTILLA_S3_REGION")]
    pub s3_region: Option<String>,
    /// Write `admin.token` (a one-year admin token) into the data directory
    /// when it is missing (the default, for a single box). Off where the
    /// data directory does not persist (Kubernetes): mint tokens with
    /// `flotilla-controller mint-token` instead.
    #[arg(long, env = "FLOTILLA_FIRST_ADMIN_TOKEN", num_args = 0..=1,
        default_missing_value = "true")]
    pub first_admin_token: Option<bool>,
    /// Objects above this many bytes move from `tmp/` to `blobs/` by a
    /// streamed copy instead of CopyObject (default: S3's 5 GiB limit).
    /// For tests, which cannot afford 5 GiB files.
    #[arg(long, env = "FLOTILLA_S3_COPY_LIMIT_BYTES", hide = true)]
    pub s3_copy_limit_bytes: Option<u64>,
}

/// The configuration file's shape; every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    database_url: Option<String>,
    object_store: Option<String>,
    jwt_keys: Option<PathBuf>,
    audience: Option<String>,
    max_upload_bytes: Option<u64>,
    require_node_approval: Option<bool>,
    heartbeat_interval_ms: Option<u64>,
    public_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    node_ca_cert: Option<PathBuf>,
    node_ca_key: Option<PathBuf>,
    /// As the flag: `24h`, `90m`, …
    node_cert_ttl: Option<String>,
    first_admin_token_ttl_hours: Option<u64>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    first_admin_token: Option<bool>,
}

/// Default lifetime of the admin token written on first start: long
/// enough to set up the fleet and mint named tokens, short enough that a
/// forgotten copy of the file stops opening the controller within a day.
pub const DEFAULT_FIRST_ADMIN_TOKEN_TTL: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// The resolved configuration.
#[derive(Clone)]
pub struct ControllerConfig {
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub database_url: String,
    pub object_store: Option<String>,
    pub jwt_keys: PathBuf,
    pub audience: String,
    pub max_upload_bytes: u64,
    pub require_node_approval: bool,
    pub heartbeat_interval: std::time::Duration,
    pub public_url: Option<String>,
    /// Certificate chain and key files: REST and gRPC serve TLS with them.
    pub tls: Option<TlsFiles>,
    /// The node CA's certificate and key; `None`: created in the data
    /// directory (`auth::node_ca`).
    pub node_ca: Option<TlsFiles>,
    /// Lifetime of node certificates.
    pub node_cert_ttl: std::time::Duration,
    /// How often a replica re-reads changed desired states even without a
    /// change announcement (which makes it prompt). Not a flag: tests set
    /// it to prove that announcements alone deliver changes.
    pub change_rescan_interval: std::time::Duration,
    /// Lifetime of the admin token written to `admin.token` when missing.
    pub first_admin_token_ttl: std::time::Duration,
    /// S3 settings beyond the `s3://` URL.
    pub s3: crate::objects::S3Options,
    /// Whether a missing `admin.token` is written at start.
    pub first_admin_token: bool,
}

impl std::fmt::Debug for ControllerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerConfig")
            .field("data_dir", &self.data_dir)
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field(
                "database_url",
                &crate::store::redact_url(&self.database_url),
            )
            .field("object_store", &self.object_store)
            .field("jwt_keys", &self.jwt_keys)
            .field("audience", &self.audience)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("require_node_approval", &self.require_node_approval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("public_url", &self.public_url)
            .field("tls", &self.tls)
            .field("node_ca", &self.node_ca)
            .field("node_cert_ttl", &self.node_cert_ttl)
            .field("change_rescan_interval", &self.change_rescan_interval)
            .field("first_admin_token_ttl", &self.first_admin_token_ttl)
            .field("s3", &self.s3)
            .field("first_admin_token", &self.first_admin_token)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("tls_cert and tls_key go together; only {given} is set")]
    HalfTls { given: &'static str },
    #[error("node_ca_cert and node_ca_key go together; only {given} is set")]
    HalfNodeCa { given: &'static str },
    #[error("invalid node_cert_ttl: {0}")]
    NodeCertTtl(String),
}

/// Where the controller's TLS certificate chain and private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ControllerConfig {
    /// Merges flags/env over the file over the defaults.
    pub fn resolve(args: &ControllerArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = args
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| sqlite_url(&data_dir.join("flotilla.db")));
        let jwt_keys = args
            .jwt_keys
            .clone()
            .or(file.jwt_keys)
            .unwrap_or_else(|| data_dir.join("auth-keys.toml"));
        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::HalfTls { given: "tls_cert" }),
            (None, Some(_)) => return Err(ConfigError::HalfTls { given: "tls_key" }),
        };
        let node_ca = match (
            args.node_ca_cert.clone().or(file.node_ca_cert),
            args.node_ca_key.clone().or(file.node_ca_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::HalfNodeCa {
                    given: "node_ca_cert",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::HalfNodeCa {
                    given: "node_ca_key",
                });
            }
        };
        let node_cert_ttl = match (args.node_cert_ttl, file.node_cert_ttl) {
            (Some(ttl), _) => ttl,
            (None, Some(text)) => {
                crate::auth::node_ca::parse_ttl(&text).map_err(ConfigError::NodeCertTtl)?
            }
            (None, None) => crate::auth::node_ca::DEFAULT_NODE_CERT_TTL,
        };
        Ok(Self {
            tls,
            node_ca,
            node_cert_ttl,
            http_addr: args.http.or(file.http).unwrap_or_else(default_http_addr),
            grpc_addr: args.grpc.or(file.grpc).unwrap_or_else(default_grpc_addr),
            database_url,
            object_store: args.object_store.clone().or(file.object_store),
            jwt_keys,
            audience: args
                .audience
                .clone()
                .or(file.audience)
                .unwrap_or_else(|| crate::auth::DEFAULT_AUDIENCE.to_owned()),
            max_upload_bytes: args
                .max_upload_bytes
                .or(file.max_upload_bytes)
                .unwrap_or(DEFAULT_MAX_UPLOAD_BYTES),
            require_node_approval: args
                .require_node_approval
                .or(file.require_node_approval)
                .unwrap_or(false),
            heartbeat_interval: std::time::Duration::from_millis(
                args.heartbeat_interval_ms
                    .or(file.heartbeat_interval_ms)
                    .unwrap_or(5000)
                    .clamp(100, 600_000),
            ),
            public_url: args.public_url.clone().or(file.public_url),
            change_rescan_interval: crate::fleet::follow::RESCAN_EVERY,
            first_admin_token_ttl: args
                .first_admin_token_ttl_hours
                .or(file.first_admin_token_ttl_hours)
                .map_or(DEFAULT_FIRST_ADMIN_TOKEN_TTL, |hours| {
                    std::time::Duration::from_secs(hours.clamp(1, 8784) * 3600)
                }),
            data_dir,
            s3: crate::objects::S3Options {
                endpoint: args.s3_endpoint.clone().or(file.s3_endpoint),
                region: args.s3_region.clone().or(file.s3_region),
                copy_limit_bytes: args.s3_copy_limit_bytes,
            },
            first_admin_token: args
                .first_admin_token
                .or(file.first_admin_token)
                .unwrap_or(true),
        })
    }

    /// A configuration for tests: everything in `data_dir`, ports chosen by the OS.
    pub fn for_tests(data_dir: &Path, database_url: Option<String>) -> Self {
        let any_port: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir: data_dir.to_path_buf(),
            http_addr: any_port,
            grpc_addr: any_port,
            database_url: database_url.unwrap_or_else(|| sqlite_url(&data_dir.join("flotilla.db"))),
            object_store: None,
            jwt_keys: data_dir.join("auth-keys.toml"),
            audience: crate::auth::DEFAULT_AUDIENCE.to_owned(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            require_node_approval: false,
            heartbeat_interval: crate::fleet::DEFAULT_HEARTBEAT_INTERVAL,
            public_url: None,
            tls: None,
            node_ca: None,
            node_cert_ttl: crate::auth::node_ca::DEFAULT_NODE_CERT_TTL,
            change_rescan_interval: crate::fleet::follow::RESCAN_EVERY,
            first_admin_token_ttl: DEFAULT_FIRST_ADMIN_TOKEN_TTL,
            s3: crate::objects::S3Options::default(),
            first_admin_token: true,
        }
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    pub fn local_objects_dir(&self) -> PathBuf {
        self.data_dir.join("objects")
    }
}

fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_grpc_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.message().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_single_box() {
        let config = ControllerConfig::resolve(&ControllerArgs::default()).expect("defaults");
        assert_eq!(config.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(config.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
        assert_eq!(config.database_url, "sqlite://./flotilla-data/flotilla.db");
        assert_eq!(
            config.admin_token_path(),
            PathBuf::from("./flotilla-data/admin.token")
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("controller.toml");
        std::fs::write(&file, "http = \"0.0.0.0:9000\"\ngrpc = \"0.0.0.0:9001\"\n").expect("write");
        let args = ControllerArgs {
            config: Some(file),
            http: Some("127.0.0.1:7000".parse().expect("addr")),
            ..Default::default()
        };
        let config = ControllerConfig::resolve(&args).expect("valid");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:7000");
        assert_eq!(config.grpc_addr.to_string(), "0.0.0.0:9001");
    }

    #[test]
    fn the_node_ca_and_certificate_lifetime_come_from_flags_or_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("controller.toml");
        std::fs::write(
            &file,
            "node_cert_ttl = \"2h\"\nnode_ca_cert = \"/etc/flotilla/ca.pem\"\nnode_ca_key = \"/etc/flotilla/ca.key\"\n",
        )
        .expect("write");
        let args = ControllerArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let config = ControllerConfig::resolve(&args).expect("valid");
        assert_eq!(config.node_cert_ttl, std::time::Duration::from_secs(7200));
        assert_eq!(
            config.node_ca.map(|files| files.key),
            Some(PathBuf::from("/etc/flotilla/ca.key"))
        );
        std::fs::write(&file, "node_ca_cert = \"/etc/flotilla/ca.pem\"\n").expect("write");
        assert!(matches!(
            ControllerConfig::resolve(&args),
            Err(ConfigError::HalfNodeCa { .. })
        ));
        std::fs::write(&file, "node_cert_ttl = \"5s\"\n").expect("write");
        assert!(matches!(
            ControllerConfig::resolve(&args),
            Err(ConfigError::NodeCertTtl(_))
        ));
        let defaults = ControllerConfig::resolve(&ControllerArgs::default()).expect("valid");
        assert_eq!(
            defaults.node_cert_ttl,
            std::time::Duration::from_secs(86_400)
        );
        assert!(defaults.node_ca.is_none());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("controller.toml");
        std::fs::write(&file, "htp = \"0.0.0.0:9000\"\n").expect("write");
        let args = ControllerArgs {
            config: Some(file),
            ..Default::default()
        };
        assert!(matches!(
            ControllerConfig::resolve(&args),
            Err(ConfigError::Parse { .. })
        ));
    }
}
