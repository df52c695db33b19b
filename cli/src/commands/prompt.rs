//! `flotilla prompt …`: versioned system prompts. Each `create` adds a new
//! version (1, 2, …) of the named prompt; `show NAME@N` reads an old one.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use flotilla_api_types::CreatePromptVersionRequest;
use flotilla_client::ApiClient;

use super::{ListArgs, collect_pages};
use crate::output::{Printer, Table, human_time, printable};

#[derive(Debug, clap::Subcommand)]
pub enum PromptCommand {
    /// Adds a new version of a system prompt (creating the prompt if needed).
    Create(CreateArgs),
    /// Lists prompts with their latest version.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Shows a prompt's latest version, or NAME@VERSION for a given one.
    Show {
        /// NAME or NAME@VERSION.
        #[arg(value_name = "NAME[@VERSION]", value_parser = parse_prompt_ref)]
        prompt: PromptRef,
    },
    /// Lists every version of a prompt, newest first.
    Versions {
        name: String,
        #[command(flatten)]
        list: ListArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The prompt's name.
    pub name: String,
    /// The prompt's text.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub text: Option<String>,
    /// Read the prompt's text from a file (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// A Jinja chat template that replaces the model's own.
    #[arg(long, value_name = "PATH")]
    pub chat_template_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRef {
    pub name: String,
    pub version: Option<u32>,
}

pub async fn run(
    command: PromptCommand,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    match command {
        PromptCommand::Create(args) => {
            let text = match (&args.text, &args.file) {
                (Some(text), _) => text.clone(),
                (None, Some(path)) => read_text(path)?,
                // clap's group makes exactly one of them present.
                (None, None) => anyhow::bail!("pass --text TEXT or --file PATH"),
            };
            let chat_template = args
                .chat_template_file
                .as_deref()
                .map(read_text)
                .transpose()?;
            let created = client
                .create_prompt_version(
                    &args.name,
                    &CreatePromptVersionRequest {
                        text,
                        chat_template,
                    },
                )
                .await?;
            if printer.is_json() {
                return printer.json(&created);
            }
            printer.line(&format!(
                "created prompt {} version {}",
                created.name, created.version
            ))
        }
        PromptCommand::Ls(list) => {
            let page = collect_pages(list.limit, |limit, after| async move {
                client.list_prompts(limit, after.as_deref()).await
            })
            .await?;
            if printer.is_json() {
                return printer.json(&page);
            }
            let mut table = Table::new(&["NAME", "LATEST", "UPDATED"]);
            for prompt in &page.items {
                table.row(vec![
                    prompt.name.clone(),
                    prompt.latest_version.to_string(),
                    human_time(prompt.updated_at),
                ]);
            }
            printer.table(&table)
        }
        PromptCommand::Show { prompt } => {
            let found = client.prompt(&prompt.name, prompt.version).await?;
            if printer.is_json() {
                return printer.json(&found);
            }
            printer.fields(&[
                ("name", found.name.clone()),
                ("version", found.version.to_string()),
                ("created", human_time(found.created_at)),
            ])?;
            printer.line("")?;
            printer.line(printable(&found.text).trim_end())?;
            if let Some(template) = &found.chat_template {
                printer.line("")?;
                printer.line("chat template:")?;
                printer.line(printable(template).trim_end())?;
            }
            Ok(())
        }
        PromptCommand::Versions { name, list } => {
            let page = collect_pages(list.limit, |limit, after| {
                let name = &name;
                async move {
                    client
                        .list_prompt_versions(name, limit, after.as_deref())
                        .await
                }
            })
            .await?;
            if printer.is_json() {
                return printer.json(&page);
            }
            let mut table = Table::new(&["VERSION", "CREATED", "TEMPLATE", "TEXT"]);
            for prompt in &page.items {
                table.row(vec![
                    prompt.version.to_string(),
                    human_time(prompt.created_at),
                    if prompt.chat_template.is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                    .to_owned(),
                    preview(&prompt.text),
                ]);
            }
            printer.table(&table)
        }
    }
}

/// The whole text of a file (or stdin for `-`), which must be UTF-8.
pub(crate) fn read_text(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin (is it UTF-8?)")?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} (is it a UTF-8 text file?)", path.display()))
}

/// The first line of a prompt, cut to fit a table.
fn preview(text: &str) -> String {
    const PREVIEW_CHARS: usize = 60;
    let first_line = text.lines().next().unwrap_or_default();
    let mut shown: String = first_line.chars().take(PREVIEW_CHARS).collect();
    if shown.len() < text.trim_end().len() {
        shown.push('…');
    }
    shown
}

/// `NAME` or `NAME@VERSION`, where VERSION is a positive whole number (of a
/// prompt or an escalation policy: both are versioned alike).
pub(crate) fn parse_prompt_ref(text: &str) -> Result<PromptRef, String> {
    let (name, version) = match text.rsplit_once('@') {
        None => (text, None),
        Some((name, version)) => {
            let version = version
                .parse::<u32>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    format!("invalid version {version:?}: expected a number such as {name}@2")
                })?;
            (name, Some(version))
        }
    };
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    Ok(PromptRef {
        name: name.to_owned(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_refs_take_an_optional_version() {
        assert_eq!(
            parse_prompt_ref("greeter"),
            Ok(PromptRef {
                name: "greeter".into(),
                version: None
            })
        );
        assert_eq!(
            parse_prompt_ref("greeter@3"),
            Ok(PromptRef {
                name: "greeter".into(),
                version: Some(3)
            })
        );
        assert!(parse_prompt_ref("greeter@latest").is_err());
        assert!(parse_prompt_ref("greeter@0").is_err());
        assert!(parse_prompt_ref("@2").is_err());
    }

    #[test]
    fn previews_cut_long_and_multi_line_text() {
        assert_eq!(preview("short"), "short");
        assert_eq!(preview("first\nsecond"), "first…");
        assert_eq!(preview(&"x".repeat(100)).chars().count(), 61);
    }
}
