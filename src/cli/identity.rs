//! `weft user add|passwd|disable|list`, `weft key create|revoke|list` and `weft login`: the node's users and
//! API keys (see `docs/security.md`). Passwords are read from `--password-file` or from the first line of
//! stdin, never from an argument (arguments show in `ps` and shell histories).

use std::io::BufRead as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::reads::{ListArgs, list};
use super::render::item;
use super::{Connection, TIMEOUT, print, segment};

/// Where a password comes from.
#[derive(Debug, Clone, Args)]
pub struct PasswordSource {
    /// A file whose first line is the password; without it, the first line of stdin.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// The password is a hash imported from another system (an Argon2 PHC string, or bcrypt's `$2b$...`),
    /// read as the password would be.
    #[arg(long)]
    pub hashed: bool,
}

impl PasswordSource {
    /// The password (or hash) it names.
    fn read(&self) -> anyhow::Result<String> {
        let line = match &self.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("the password file {}: {e}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => {
                eprintln!("reading the password from the first line of stdin");
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line
            }
        };
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(!line.is_empty(), "the password is empty");
        Ok(line)
    }

    /// The body's password field: `password` or `password_hash`.
    fn field(&self) -> &'static str {
        if self.hashed { "password_hash" } else { "password" }
    }
}

/// The verbs of users.
#[derive(Debug, Clone, Subcommand)]
pub enum UserVerb {
    /// Adds a user that logs in with a password (`weft login`).
    Add {
        /// Its name: the subject of its tokens and the owner of what it makes.
        name: String,
        /// Its role.
        #[arg(long, value_enum)]
        role: crate::auth::Role,
        /// A tenant it may reach (repeat for several; `*`: every tenant).
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Changes a user's password (your own, or any as an admin); its tokens issued before stop working.
    Passwd {
        /// The user.
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Disables a user: it cannot log in, and its tokens stop working.
    Disable {
        /// The user.
        name: String,
        /// Why, for the record.
        #[arg(long)]
        reason: String,
    },
    /// The users, ordered by name.
    List(ListArgs),
}

/// The verbs of API keys.
#[derive(Debug, Clone, Subcommand)]
pub enum KeyVerb {
    /// Makes an API key and prints it: it is shown this once, and only its hash is kept.
    Create {
        /// What it is for (a service's name); its requests act as `key:<name>`.
        #[arg(long)]
        name: String,
        /// Its role.
        #[arg(long, value_enum)]
        role: crate::auth::Role,
        /// A tenant it may reach (repeat for several; `*`: every tenant).
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
        /// How long it works (`90d`, `12h`); for ever without it.
        #[arg(long, value_parser = super::token::parse_ttl)]
        ttl: Option<std::time::Duration>,
    },
    /// Revokes an API key: it is refused from now on.
    Revoke {
        /// Its id (as `weft key list` shows).
        id: String,
        /// Why, for the record.
        #[arg(long)]
        reason: String,
    },
    /// The API keys (never their secrets), ordered by id.
    List(ListArgs),
}

/// What `weft login` takes.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// The user.
    #[arg(long)]
    pub user: String,
    #[command(flatten)]
    pub password: PasswordSource,
    /// How long the token lives (at most 24h).
    #[arg(long, value_parser = super::token::parse_ttl)]
    pub ttl: Option<std::time::Duration>,
}

/// `weft user ...`.
pub async fn user(connection: Connection, verb: UserVerb) -> anyhow::Result<()> {
    let client = connection.client()?;
    let answer = match verb {
        UserVerb::Add { name, role, tenants, password } => {
            let mut body = json!({"name": name, "role": role, "tenants": tenants});
            body[password.field()] = json!(password.read()?);
            client.post("/auth/users", Some(&body), &[], TIMEOUT).await?
        }
        UserVerb::Passwd { name, password } => {
            let body = json!({ password.field(): password.read()? });
            client.post(&format!("/auth/users/{}/password", segment(&name)), Some(&body), &[], TIMEOUT).await?
        }
        UserVerb::Disable { name, reason } => {
            let body = json!({ "reason": reason });
            client.post(&format!("/auth/users/{}/disable", segment(&name)), Some(&body), &[], TIMEOUT).await?
        }
        UserVerb::List(args) => return list(&client, connection.output, "auth/users", args).await,
    };
    print(connection.output, &answer, item);
    Ok(())
}

/// `weft key ...`.
pub async fn key(connection: Connection, verb: KeyVerb) -> anyhow::Result<()> {
    let client = connection.client()?;
    match verb {
        KeyVerb::Create { name, role, tenants, ttl } => {
            let mut body = json!({"name": name, "role": role, "tenants": tenants});
            if let Some(ttl) = ttl {
                body["ttl_secs"] = json!(ttl.as_secs());
            }
            let made = client.post("/auth/keys", Some(&body), &[], TIMEOUT).await?;
            print(connection.output, &made, |made| {
                eprintln!("the key is shown this once: keep it now (send it as WEFT_TOKEN or Authorization: Bearer)");
                item(made)
            });
        }
        KeyVerb::Revoke { id, reason } => {
            let body = json!({ "reason": reason });
            let done = client.post(&format!("/auth/keys/{}/revoke", segment(&id)), Some(&body), &[], TIMEOUT).await?;
            print(connection.output, &done, item);
        }
        KeyVerb::List(args) => list(&client, connection.output, "auth/keys", args).await?,
    }
    Ok(())
}

/// Where `weft login` keeps its token: `WEFT_LOGIN_FILE`, else `$XDG_CONFIG_HOME/weft/token`, else
/// `~/.config/weft/token`.
pub fn login_file() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("WEFT_LOGIN_FILE").filter(|f| !f.is_empty()) {
        return Some(PathBuf::from(file));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(config.join("weft").join("token"))
}

/// `weft login`: exchanges a password for a token and keeps it (owner-only) where later commands find it.
pub async fn login(connection: Connection, args: LoginArgs) -> anyhow::Result<()> {
    let password = args.password.read()?;
    // No token of another identity goes along with a password.
    let client = super::Client::new(&connection.url, None)?;
    let mut body = json!({"user": args.user, "password": password});
    if let Some(ttl) = args.ttl {
        body["ttl_secs"] = json!(ttl.as_secs());
    }
    let answer = client.post("/auth/token", Some(&body), &[], TIMEOUT).await?;
    let token = answer["token"].as_str().ok_or_else(|| anyhow::anyhow!("the node answered no token: {answer}"))?;
    let file = login_file().ok_or_else(|| anyhow::anyhow!("no HOME to keep the token in: set WEFT_LOGIN_FILE"))?;
    if let Some(folder) = file.parent() {
        std::fs::create_dir_all(folder).map_err(|e| anyhow::anyhow!("{}: {e}", folder.display()))?;
    }
    let _ = std::fs::remove_file(&file);
    crate::auth::token::write_private(&file, token.as_bytes(), true)
        .map_err(|e| anyhow::anyhow!("the login file {}: {e}", file.display()))?;
    eprintln!(
        "logged in as {} ({}) for {} s; the token is in {}",
        answer["subject"].as_str().unwrap_or_default(),
        answer["role"].as_str().unwrap_or_default(),
        answer["expires_in"],
        file.display()
    );
    Ok(())
}
