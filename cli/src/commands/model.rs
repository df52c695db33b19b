//! `flotilla model …`: push GGUF files, list and show models, move versions
//! through their lifecycle, and ask which artifact a requirement resolves to.
//!
//! `push` is the one command with several steps; it is safe to re-run at any
//! point: the model and version are created only when missing, a file the
//! version already holds is not sent again, and a version is published only
//! while it is a draft.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use flotilla_api_types::{
    ArtifactInfo, CreateModelRequest, CreateVersionRequest, ModelDetail, ResolveQuery,
    UpdateVersionRequest, VersionInfo,
};
use flotilla_client::{ApiClient, ClientError, Upload, Uploaded};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{ListArgs, collect_pages};
use crate::output::{Printer, Table, human_bytes, human_count, human_time, short_digest};

#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Uploads a GGUF file as an artifact of a model version (creating the
    /// model and the version when missing), then publishes the version.
    Push(PushArgs),
    /// Lists models.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Shows a model with its versions and their artifacts.
    Show {
        /// The model's name.
        name: String,
    },
    /// Publishes a draft (or re-publishes a deprecated) version.
    Publish(VersionRef),
    /// Marks a version deprecated: still resolvable, but operators should move on.
    Deprecate(VersionRef),
    /// Withdraws a version: it never resolves again.
    Yank(VersionRef),
    /// Shows which version and artifact a requirement resolves to.
    Resolve(ResolveArgs),
    /// Deletes a model that was never published (with its drafts), or with
    /// `--version` one draft version.
    #[command(visible_alias = "delete")]
    Rm {
        /// The model's name.
        name: String,
        /// Delete only this draft version.
        #[arg(long, value_parser = semver::Version::parse)]
        version: Option<semver::Version>,
    },
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The GGUF file to upload.
    pub file: PathBuf,
    /// The model's name (created if missing).
    #[arg(long)]
    pub name: String,
    /// The version, a semantic version such as 1.2.0 (created if missing).
    #[arg(long, value_parser = semver::Version::parse)]
    pub version: semver::Version,
    /// `auto` lets the controller read the quantization from the file; a
    /// name such as Q4_1 makes it refuse a file with any other.
    #[arg(long, default_value = "auto", value_name = "auto|QUANT")]
    pub quant: String,
    /// Description of the model, used only when the model is created.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Release notes of the version, used only when the version is created.
    #[arg(long, default_value = "")]
    pub notes: String,
    /// Leave the version a draft (to add more artifacts before publishing).
    #[arg(long)]
    pub draft: bool,
}

#[derive(Debug, clap::Args)]
pub struct VersionRef {
    /// The model's name.
    pub name: String,
    /// The version, such as 1.2.0.
    #[arg(value_parser = semver::Version::parse)]
    pub version: semver::Version,
}

#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// The model's name.
    pub name: String,
    /// A semver requirement such as ^1.2 or =1.3.0 [default: *].
    #[arg(long = "version", value_name = "REQ", value_parser = parse_requirement)]
    pub requirement: Option<String>,
    /// `auto` or a preference list such as Q8_0,Q4_1 [default: auto].
    #[arg(long, value_name = "POLICY")]
    pub quant: Option<String>,
    /// With `auto`: the highest precision that fits in this much memory
    /// (bytes, or with a unit: 512MiB, 8GiB, 8G, 10GB).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub memory_budget: Option<u64>,
}

pub async fn run(
    command: ModelCommand,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    match command {
        ModelCommand::Push(args) => push(args, client, printer).await,
        ModelCommand::Ls(list) => {
            let page = collect_pages(list.limit, |limit, after| async move {
                client.list_models(limit, after.as_deref()).await
            })
            .await?;
            if printer.is_json() {
                return printer.json(&page);
            }
            let mut table = Table::new(&["NAME", "CREATED", "DESCRIPTION"]);
            for model in &page.items {
                table.row(vec![
                    model.name.clone(),
                    human_time(model.created_at),
                    model.description.clone(),
                ]);
            }
            printer.table(&table)
        }
        ModelCommand::Show { name } => show(&name, client, printer).await,
        ModelCommand::Publish(target) => set_state(target, "published", client, printer).await,
        ModelCommand::Deprecate(target) => set_state(target, "deprecated", client, printer).await,
        ModelCommand::Yank(target) => set_state(target, "yanked", client, printer).await,
        ModelCommand::Resolve(args) => resolve(args, client, printer).await,
        ModelCommand::Rm { name, version } => {
            match &version {
                Some(version) => {
                    client.delete_version(&name, &version.to_string()).await?;
                    status(&format!("deleted draft version {name} {version}"));
                }
                None => {
                    client.delete_model(&name).await?;
                    status(&format!("deleted model {name}"));
                }
            }
            Ok(())
        }
    }
}

async fn push(args: PushArgs, client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    let version_text = args.version.to_string();
    let quantization = (!args.quant.eq_ignore_ascii_case("auto")).then_some(args.quant.as_str());
    let file_size = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    if !args.file.is_file() {
        anyhow::bail!("{} is not a regular file", args.file.display());
    }
    // Hash first: the digest goes with the upload so that the controller
    // refuses bytes altered on the way, and it tells whether the version
    // already holds this file (then nothing is sent).
    let digest = hash_file(&args.file, file_size).await?;
    status(&format!("blake3 {digest}  {}", args.file.display()));

    let created_model = ensure_model(client, &args.name, &args.description).await?;
    let (version, created_version) =
        match ensure_version(client, &args.name, &version_text, &args.notes).await {
            Ok(found) => found,
            Err(error) => {
                undo_push(client, &args.name, None, created_model).await;
                return Err(error);
            }
        };

    let existing = version
        .artifacts
        .iter()
        .find(|artifact| artifact.digest == digest)
        .cloned();
    let artifact = match existing {
        Some(artifact) => {
            if let Some(wanted) = quantization
                && !artifact.quantization.eq_ignore_ascii_case(wanted)
            {
                anyhow::bail!(
                    "the file's quantization is {}, but {wanted} was requested",
                    artifact.quantization
                );
            }
            status(&format!(
                "{} {} already has this file ({}); nothing to upload",
                args.name, version_text, artifact.quantization
            ));
            artifact
        }
        None if version.state != "draft" => {
            // The controller would refuse too, but only after the file was
            // sent; saying it now saves uploading gigabytes for nothing.
            anyhow::bail!(
                "version {version_text} of model {} is {}; artifacts can be added only to drafts (push a new version)",
                args.name,
                version.state
            );
        }
        None => {
            let upload = Upload {
                model: &args.name,
                version: &version_text,
                path: &args.file,
                digest: &digest,
                quantization,
            };
            let uploaded = match upload_with_progress(client, &upload, file_size).await {
                Ok(uploaded) => uploaded,
                Err(error) => {
                    // A refused upload leaves nothing behind: what this push
                    // created is deleted again.
                    let created = created_version.then_some(version_text.as_str());
                    undo_push(client, &args.name, created, created_model).await;
                    return Err(error.into());
                }
            };
            match uploaded {
                Uploaded::Created(artifact) => {
                    status(&format!(
                        "uploaded {} to {} {} ({}, {})",
                        args.file.display(),
                        args.name,
                        version_text,
                        artifact.quantization,
                        human_bytes(artifact.size_bytes)
                    ));
                    artifact
                }
                Uploaded::AlreadyPresent(artifact) => {
                    status(&format!(
                        "{} {} already had this file",
                        args.name, version_text
                    ));
                    artifact
                }
            }
        }
    };

    let state = if !args.draft && version.state == "draft" {
        let published = client
            .update_version(
                &args.name,
                &version_text,
                &UpdateVersionRequest {
                    state: "published".to_owned(),
                },
            )
            .await?;
        status(&format!("published {} {}", args.name, version_text));
        published.state
    } else {
        version.state
    };

    if printer.is_json() {
        return printer.json(&artifact);
    }
    let mut fields = vec![
        ("model", artifact.model.clone()),
        ("version", format!("{} ({state})", artifact.version)),
    ];
    fields.extend(artifact_fields(&artifact));
    printer.fields(&fields)
}

/// Deletes what a failed push created: the draft version, then the model.
/// Failures are reported but not raised: the push's own error is the one the
/// user needs.
async fn undo_push(client: &ApiClient, model: &str, version: Option<&str>, model_created: bool) {
    if let Some(version) = version {
        match client.delete_version(model, version).await {
            Ok(()) => status(&format!(
                "removed the draft version {model} {version} this push created"
            )),
            Err(error) => status(&format!(
                "could not remove the draft version {model} {version}: {error}"
            )),
        }
    }
    if model_created {
        match client.delete_model(model).await {
            Ok(()) => status(&format!("removed the model {model} this push created")),
            Err(error) => status(&format!("could not remove the model {model}: {error}")),
        }
    }
}

/// Creates the model; one that already exists is fine (its description is
/// left as it is). Whether this call created it.
async fn ensure_model(client: &ApiClient, name: &str, description: &str) -> anyhow::Result<bool> {
    let request = CreateModelRequest {
        name: name.to_owned(),
        description: description.to_owned(),
    };
    match client.create_model(&request).await {
        Ok(_) => {
            status(&format!("created model {name}"));
            Ok(true)
        }
        Err(error) if error.api_code() == Some("already_exists") => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Creates the version, or fetches it when it already exists; and whether
/// this call created it.
async fn ensure_version(
    client: &ApiClient,
    model: &str,
    version: &str,
    notes: &str,
) -> anyhow::Result<(VersionInfo, bool)> {
    let request = CreateVersionRequest {
        version: version.to_owned(),
        notes: notes.to_owned(),
    };
    match client.create_version(model, &request).await {
        Ok(created) => {
            status(&format!("created version {model} {version} (draft)"));
            Ok((created, true))
        }
        Err(error) if error.api_code() == Some("already_exists") => {
            Ok((client.version(model, version).await?, false))
        }
        Err(error) => Err(error.into()),
    }
}

/// blake3 of the file, memory-mapped and on every core; off the async
/// workers because it may take a while for a large model.
async fn hash_file(path: &Path, size: u64) -> anyhow::Result<String> {
    let spinner = progress_bar(None);
    spinner.set_message(format!(
        "hashing {} ({})",
        path.display(),
        human_bytes(size)
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let owned = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_mmap_rayon(&owned)
            .map(|hasher| hasher.finalize().to_hex().to_string())
    })
    .await;
    spinner.finish_and_clear();
    let digest = hashed
        .context("hashing thread failed")?
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(digest)
}

async fn upload_with_progress(
    client: &ApiClient,
    upload: &Upload<'_>,
    size: u64,
) -> Result<Uploaded, ClientError> {
    let bar = progress_bar(Some(size));
    bar.set_message("uploading");
    let ticker = bar.clone();
    let result = client
        .upload_artifact(upload, move |bytes| {
            ticker.inc(bytes);
            if ticker.position() >= size {
                // Every byte is sent; the controller still parses and stores it.
                ticker.set_message("verifying");
            }
        })
        .await;
    bar.finish_and_clear();
    result
}

/// A bar (with a length) or a spinner on stderr, hidden unless stderr is a
/// terminal so that logs and pipes get no control sequences.
fn progress_bar(length: Option<u64>) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let (bar, template) = match length {
        Some(length) => (
            ProgressBar::with_draw_target(Some(length), target),
            // `wide_*` shrink to the terminal so the bar never wraps.
            "{msg:9} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, target),
            "{spinner} {msg}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// What `push` did along the way, on stderr so stdout stays the result.
fn status(message: &str) {
    eprintln!("{message}");
}

async fn show(name: &str, client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    let detail = client.model(name).await?;
    // The detail inlines only the newest versions; page through all of them.
    let versions = collect_pages(None, |limit, after| async move {
        client.list_versions(name, limit, after.as_deref()).await
    })
    .await?;
    let detail = ModelDetail {
        model: detail.model,
        versions: versions.items,
    };
    if printer.is_json() {
        return printer.json(&detail);
    }
    printer.fields(&[
        ("name", detail.model.name.clone()),
        ("description", detail.model.description.clone()),
        ("created", human_time(detail.model.created_at)),
    ])?;
    printer.line("")?;
    let mut table = Table::new(&[
        "VERSION", "STATE", "QUANT", "ARCH", "PARAMS", "SIZE", "CONTEXT", "SERVABLE", "DIGEST",
        "CREATED",
    ]);
    let mut refusals = Vec::new();
    for version in &detail.versions {
        if version.artifacts.is_empty() {
            table.row(vec![
                version.version.clone(),
                version.state.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                human_time(version.created_at),
            ]);
        }
        for artifact in &version.artifacts {
            if let Some(reason) = &artifact.unservable_reason {
                refusals.push(format!(
                    "{} {}: cannot be served: {reason}",
                    version.version, artifact.quantization
                ));
            }
            table.row(vec![
                version.version.clone(),
                version.state.clone(),
                artifact.quantization.clone(),
                artifact.architecture.clone(),
                human_count(artifact.parameter_count),
                human_bytes(artifact.size_bytes),
                artifact
                    .context_length
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                servable_cell(artifact).to_owned(),
                short_digest(&artifact.digest),
                human_time(version.created_at),
            ]);
        }
    }
    printer.table(&table)?;
    if !refusals.is_empty() {
        printer.line("")?;
        for refusal in refusals {
            printer.line(&refusal)?;
        }
    }
    Ok(())
}

async fn set_state(
    target: VersionRef,
    state: &str,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    let version = target.version.to_string();
    let updated = client
        .update_version(
            &target.name,
            &version,
            &UpdateVersionRequest {
                state: state.to_owned(),
            },
        )
        .await?;
    if printer.is_json() {
        return printer.json(&updated);
    }
    printer.line(&format!(
        "{} {} is now {}",
        updated.model, updated.version, updated.state
    ))
}

async fn resolve(args: ResolveArgs, client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    let query = ResolveQuery {
        model: args.name,
        requirement: args.requirement,
        quantization: args.quant,
        memory_budget_bytes: args.memory_budget,
    };
    let resolution = client.resolve(&query).await?;
    if printer.is_json() {
        return printer.json(&resolution);
    }
    let mut fields = vec![
        ("model", resolution.model.clone()),
        (
            "version",
            format!("{} ({})", resolution.version, resolution.state),
        ),
    ];
    fields.extend(artifact_fields(&resolution.artifact));
    printer.fields(&fields)
}

fn artifact_fields(artifact: &ArtifactInfo) -> Vec<(&'static str, String)> {
    vec![
        ("quantization", artifact.quantization.clone()),
        ("architecture", artifact.architecture.clone()),
        ("parameters", human_count(artifact.parameter_count)),
        ("size", human_bytes(artifact.size_bytes)),
        (
            "context",
            artifact
                .context_length
                .map_or_else(|| "unknown".to_owned(), |tokens| format!("{tokens} tokens")),
        ),
        ("memory", human_bytes(artifact.memory_estimate_bytes)),
        ("servable", servable_text(artifact)),
        ("digest", format!("blake3:{}", artifact.digest)),
    ]
}

/// Whether this release's engine can serve the artifact, and if not why.
fn servable_text(artifact: &ArtifactInfo) -> String {
    match (artifact.servable, &artifact.unservable_reason) {
        (None, _) => "unchecked (uploaded before the engine checked uploads)".to_owned(),
        (Some(true), _) => "yes".to_owned(),
        (Some(false), Some(reason)) => format!("no: {reason}"),
        (Some(false), None) => "no".to_owned(),
    }
}

/// The SERVABLE column: short, with the reasons listed under the table.
fn servable_cell(artifact: &ArtifactInfo) -> &'static str {
    match artifact.servable {
        None => "-",
        Some(true) => "yes",
        Some(false) => "NO",
    }
}

/// Checks a requirement here so a typo is a usage error, but sends the
/// operator's own text: the controller is the authority on its meaning.
fn parse_requirement(text: &str) -> Result<String, String> {
    semver::VersionReq::parse(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("invalid version requirement: {e}"))
}

/// `1073741824`, `512MiB`, `8 GiB`, `8G` (binary), `10GB` (decimal), `1.5GiB`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ));
        }
    };
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: expected a number such as 8GiB"
        ));
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| format!("{text:?} is too large"));
    }
    let fractional: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size: expected a number such as 8GiB"))?;
    let bytes = (fractional * multiplier as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("8 GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("8g"), Ok(8 << 30));
        assert_eq!(parse_bytes("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("8 parsecs").is_err());
        assert!(parse_bytes("99999999999999TiB").is_err());
        assert!(parse_bytes("1.2.3").is_err());
    }

    #[test]
    fn requirements_are_checked_but_sent_verbatim() {
        assert_eq!(parse_requirement("^1.2"), Ok("^1.2".to_owned()));
        assert!(parse_requirement("one point two").is_err());
    }
}
