//! `weft token issue`: a bearer token signed with the node's secret, made beside the node's data (it reads
//! the secret file the node made; it does not talk to the node).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::auth::{Role, token};

/// What `weft token` does.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenVerb {
    /// Prints a JWT for `--subject` with `--role` in `--tenant`, signed with the node's secret.
    Issue(IssueArgs),
}

/// `weft token issue`'s options.
#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// Who: the actor its commands record, the owner of its documents.
    #[arg(long)]
    pub subject: String,
    /// What it may do (see docs/security.md).
    #[arg(long, value_enum)]
    pub role: Role,
    /// A tenant it reaches (repeat for several; `*` for every tenant).
    #[arg(long = "tenant", required = true)]
    pub tenants: Vec<String>,
    /// How long it lives: `90s`, `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The node's event store file, beside which its secret is (`auth.secret`).
    #[arg(long, default_value = "weft-data/events.db", env = "WEFT_STORE")]
    pub store: PathBuf,
    /// The node's secret file, when not beside --store.
    #[arg(long, env = "WEFT_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,
}

/// The longest life of a token `weft token issue` makes.
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// `90s`, `30m`, `1h`, `7d` as a duration (a year at most).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?}: a number and a unit (s, m, h, d)"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    let ttl = Duration::from_secs(number.saturating_mul(seconds));
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(format!("{text:?}: between 1s and 366d"));
    }
    Ok(ttl)
}

/// Runs `weft token`.
pub fn run(verb: TokenVerb) -> anyhow::Result<()> {
    let TokenVerb::Issue(args) = verb;
    for tenant in &args.tenants {
        anyhow::ensure!(
            tenant == "*" || weft_events::envelope::check_label("tenant", tenant).is_ok(),
            "--tenant {tenant:?} is not a tenant name"
        );
    }
    anyhow::ensure!(!args.subject.trim().is_empty() && args.subject.len() <= 256, "--subject must be 1 to 256 bytes");
    let path = args.auth_secret_file.clone().unwrap_or_else(|| {
        args.store.parent().map(|folder| folder.join("auth.secret")).unwrap_or_else(|| "auth.secret".into())
    });
    let secret = token::Secret::load(&path)
        .map_err(|e| anyhow::anyhow!("{e} (run beside the node's data, or give --store or --auth-secret-file)"))?;
    println!("{}", token::issue(&secret, &args.subject, args.role, &args.tenants, args.ttl));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttls_parse() {
        use std::time::Duration;
        assert_eq!(super::parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(super::parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(super::parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "0s", "10y", "-1h", "999999d", "1.5h"] {
            assert!(super::parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
