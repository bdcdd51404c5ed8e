//! `loggregator check`: what an operator runs first when nothing arrives.
//! One line per check, ok / warn / FAIL / skip, and for each problem what
//! to do; exits 1 when anything FAILed. The checks run in the order a
//! delivery needs them: the three files, something listening, the TLS
//! handshake, then one confirmed `Send`.

mod agent;
mod files;

use std::time::Duration;

use crate::connection::ConnectionArgs;

/// Diagnoses the certificates, the agent and a delivery, one line per check.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print one JSON object instead of lines, for scripts.
    #[arg(long)]
    pub json: bool,
    /// How long each network step (connect, handshake, send) may take.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not run: a check it needs failed.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about a warn or a FAIL.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn problem(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::problem(name, Status::Fail, detail, fix)
    }

    pub fn skip(name: &'static str, because: &str) -> Check {
        Check {
            name,
            status: Status::Skip,
            detail: format!("not run: {because}"),
            fix: None,
        }
    }
}

/// Runs every check, prints the report, and returns whether nothing FAILed.
pub fn check(args: &CheckArgs) -> bool {
    let mut checks = files::check_files(&args.connection);
    // An expired certificate, or one of another CA, still goes to the
    // agent: what the agent says of it is part of the diagnosis.
    let files_usable = checks
        .iter()
        .filter(|check| files::NEEDED_TO_CONNECT.contains(&check.name))
        .all(|check| check.status == Status::Ok);
    checks.extend(agent::check_agent(args, files_usable));
    let passed = checks.iter().all(|check| check.status != Status::Fail);
    if args.json {
        println!("{}", to_json(args, &checks, passed));
    } else {
        for check in &checks {
            println!(
                "{:<4}  {}: {}",
                check.status.label(),
                check.name,
                check.detail
            );
            if let Some(fix) = &check.fix {
                println!("      fix: {fix}");
            }
        }
    }
    passed
}

fn to_json(args: &CheckArgs, checks: &[Check], passed: bool) -> serde_json::Value {
    let checks: Vec<_> = checks
        .iter()
        .map(|check| {
            serde_json::json!({
                "check": check.name,
                "status": check.status.label().to_lowercase(),
                "detail": check.detail,
                "fix": check.fix,
            })
        })
        .collect();
    serde_json::json!({
        "ok": passed,
        "agent_addr": args.connection.agent_addr,
        "server_name": args.connection.server_name,
        "checks": checks,
    })
}
