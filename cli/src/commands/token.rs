//! `flotilla token create|ls|revoke` and `flotilla whoami`: minting,
//! listing and revoking API tokens (the controller allows it to admins
//! only), and checking the configured one. `ls` and `revoke` cover
//! bootstrap tokens too (also under `flotilla node token`).

use std::time::Duration;

use flotilla_api_types::CreateTokenRequest;
use flotilla_client::{ApiClient, ClientError};

use crate::output::{Printer, Table, human_time};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Mints a token and prints it alone on stdout (details go to stderr).
    Create(CreateArgs),
    /// Lists API tokens and bootstrap tokens (never the tokens themselves).
    #[command(visible_alias = "list")]
    Ls,
    /// Revokes an API token (by the id `token ls` shows) or a bootstrap
    /// token: it is refused from now on.
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Role {
    /// Everything, including minting tokens.
    Admin,
    /// Push models, publish versions, write prompts.
    Operator,
    /// Read only.
    Viewer,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Who the token is for, e.g. ci-pipeline or alice@example.com.
    #[arg(long)]
    pub subject: String,
    #[arg(long, value_enum)]
    pub role: Role,
    /// Lifetime, e.g. 30d, 12h, 90m, 2w or seconds [default: the controller's, 30 days].
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
}

pub async fn run(
    command: TokenCommand,
    client: &ApiClient,
    printer: &Printer,
) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let request = CreateTokenRequest {
                subject: args.subject,
                role: args.role.as_str().to_owned(),
                ttl_seconds: args.ttl.map(|ttl| ttl.as_secs()),
            };
            let minted = client.create_token(&request).await?;
            if printer.is_json() {
                return printer.json(&minted);
            }
            eprintln!(
                "token for {} (role {}), expires {}",
                minted.subject,
                minted.role,
                human_time(minted.expires_at)
            );
            printer.line(&minted.token)
        }
        TokenCommand::Ls => {
            let api = client.list_tokens().await?;
            let bootstrap = client.list_bootstrap_tokens().await?;
            if printer.is_json() {
                return printer.json(&serde_json::json!({ "api": api, "bootstrap": bootstrap }));
            }
            let mut table = Table::new(&[
                "KIND",
                "ID",
                "SUBJECT/NODES",
                "ROLE/USES",
                "EXPIRES",
                "STATE",
            ]);
            for token in &api {
                table.row(vec![
                    "api".to_owned(),
                    token.id.clone(),
                    token.subject.clone(),
                    token.role.clone(),
                    human_time(token.expires_at),
                    if token.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "valid"
                    }
                    .to_owned(),
                ]);
            }
            for row in bootstrap_rows(&bootstrap) {
                table.row(row);
            }
            printer.table(&table)
        }
        TokenCommand::Revoke { id } => {
            // The two kinds have ids of their own; try the API token first.
            match client.revoke_token(&id).await {
                Ok(token) => {
                    if printer.is_json() {
                        return printer.json(&token);
                    }
                    printer.line(&format!(
                        "api token {} of {} revoked",
                        token.id, token.subject
                    ))
                }
                Err(ClientError::Api { status, .. }) if status.as_u16() == 404 => {
                    let token = client.revoke_bootstrap_token(&id).await?;
                    if printer.is_json() {
                        return printer.json(&token);
                    }
                    printer.line(&format!("bootstrap token {} revoked", token.id))
                }
                Err(error) => Err(error.into()),
            }
        }
    }
}

/// Bootstrap tokens as rows of the `token ls` table.
fn bootstrap_rows(tokens: &[flotilla_api_types::BootstrapTokenRecord]) -> Vec<Vec<String>> {
    tokens
        .iter()
        .map(|token| {
            let nodes = match (&token.node, token.replace) {
                (Some(name), true) => format!("replace {name}"),
                (Some(pattern), false) => pattern.clone(),
                (None, _) => "any".to_owned(),
            };
            let state = if token.revoked {
                "revoked"
            } else if token.expires_at <= time::OffsetDateTime::now_utc() {
                "expired"
            } else if token.uses_left == 0 {
                "used up"
            } else {
                "valid"
            };
            vec![
                "bootstrap".to_owned(),
                token.id.clone(),
                nodes,
                token.uses_left.to_string(),
                human_time(token.expires_at),
                state.to_owned(),
            ]
        })
        .collect()
}

/// `flotilla node token ls`.
pub fn bootstrap_table(tokens: &[flotilla_api_types::BootstrapTokenRecord]) -> Table {
    let mut table = Table::new(&["KIND", "ID", "NODES", "USES", "EXPIRES", "STATE"]);
    for row in bootstrap_rows(tokens) {
        table.row(row);
    }
    table
}

pub async fn whoami(client: &ApiClient, printer: &Printer) -> anyhow::Result<()> {
    let me = client.whoami().await?;
    if printer.is_json() {
        return printer.json(&me);
    }
    printer.fields(&[
        ("subject", me.subject.clone()),
        ("role", me.role.clone()),
        ("expires", human_time(me.expires_at)),
    ])
}

/// `30d`, `12h`, `90m`, `45s`, `2w`, or a bare number of seconds.
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = super::parse_duration(text)?;
    if ttl.is_zero() {
        return Err("the lifetime must be longer than zero".to_owned());
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_take_common_units() {
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_ttl("0d").is_err());
        assert!(parse_ttl("d").is_err());
        assert!(parse_ttl("3 fortnights").is_err());
        assert!(parse_ttl("99999999999999999999").is_err());
    }
}
