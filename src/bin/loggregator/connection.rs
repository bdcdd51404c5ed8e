//! The flags every subcommand shares: where the agent is, the three
//! certificate files, and whose logs these are. Each also comes from an
//! environment variable, so a bpm config or a systemd unit sets them once.

use std::path::PathBuf;

use loggregator::{IngressClient, Overflow, SourceInfo, TlsConfig};

/// The environment variable holding tags as `key=value,key=value`; a
/// `--tag` with the same key wins.
pub const TAGS_ENV: &str = "LOGGREGATOR_TAGS";

/// Where the agent is and who we are to it.
#[derive(clap::Args, Debug)]
pub struct ConnectionArgs {
    /// The agent's gRPC address.
    #[arg(long, env = "LOGGREGATOR_AGENT_ADDR", default_value = "localhost:3458")]
    pub agent_addr: String,
    /// The Loggregator CA certificate (PEM), for example a BOSH job's
    /// `/var/vcap/jobs/<job>/config/certs/loggregator_ca.crt`.
    #[arg(long, env = "LOGGREGATOR_CA_FILE")]
    pub ca_file: PathBuf,
    /// The client certificate (PEM), signed by the CA, with clientAuth usage.
    #[arg(long, env = "LOGGREGATOR_CERT_FILE")]
    pub cert_file: PathBuf,
    /// The client private key (PEM).
    #[arg(long, env = "LOGGREGATOR_KEY_FILE")]
    pub key_file: PathBuf,
    /// The name verified on the agent's certificate.
    #[arg(long, env = "LOGGREGATOR_SERVER_NAME", default_value = "metron")]
    pub server_name: String,
    /// The source id of every envelope (default in a Cloud Foundry app
    /// container: the app's id from VCAP_APPLICATION).
    #[arg(long, env = "LOGGREGATOR_SOURCE_ID")]
    pub source_id: Option<String>,
    /// The instance id of every envelope (default: CF_INSTANCE_INDEX in
    /// Cloud Foundry, otherwise 0).
    #[arg(long, env = "LOGGREGATOR_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// A tag on every envelope, as key=value; may be repeated. More come
    /// from LOGGREGATOR_TAGS as key=value,key=value (a --tag wins).
    #[arg(long = "tag", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
}

pub fn parse_tag(tag: &str) -> Result<(String, String), String> {
    match tag.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{tag:?} is not key=value")),
    }
}

impl ConnectionArgs {
    /// The TLS settings from the three files.
    pub fn tls(&self) -> loggregator::Result<TlsConfig> {
        Ok(
            TlsConfig::from_files(&self.ca_file, &self.cert_file, &self.key_file)?
                .server_name(self.server_name.as_str()),
        )
    }

    /// The `--tag`s after those of LOGGREGATOR_TAGS, so that a flag wins.
    pub fn all_tags(&self) -> Result<Vec<(String, String)>, String> {
        let mut tags = Vec::new();
        if let Some(listed) = std::env::var_os(TAGS_ENV) {
            let listed = listed
                .into_string()
                .map_err(|_| format!("{TAGS_ENV} is not UTF-8"))?;
            for tag in listed.split(',').filter(|tag| !tag.is_empty()) {
                tags.push(parse_tag(tag).map_err(|error| format!("{TAGS_ENV}: {error}"))?);
            }
        }
        tags.extend(self.tags.iter().cloned());
        Ok(tags)
    }

    /// A client of the agent, dropping or blocking when its queue is full.
    pub fn client(&self, block: bool) -> Result<IngressClient, Box<dyn std::error::Error>> {
        let mut builder = IngressClient::builder()
            .addr(self.agent_addr.as_str())
            .tls(self.tls()?)
            .overflow(if block {
                Overflow::Block
            } else {
                Overflow::DropNewest
            });
        for (key, value) in self.all_tags()? {
            builder = builder.tag(key, value);
        }
        Ok(builder.build()?)
    }

    /// Whose envelopes these are: the flags, else Cloud Foundry's
    /// environment; outside Cloud Foundry a source id is required.
    pub fn source(&self) -> Result<SourceInfo, String> {
        match (&self.source_id, SourceInfo::from_cf_env()) {
            (Some(id), cf) => {
                let cf_index = cf.ok().map(|cf| cf.instance_id().to_string());
                let instance = self
                    .instance_id
                    .clone()
                    .or(cf_index)
                    .unwrap_or_else(|| "0".into());
                Ok(SourceInfo::new(id.as_str(), instance))
            }
            (None, Ok(cf)) => Ok(match &self.instance_id {
                Some(instance) => SourceInfo::new(cf.source_id(), instance.as_str()),
                None => cf,
            }),
            (None, Err(error)) => Err(format!(
                "--source-id is required outside Cloud Foundry (or LOGGREGATOR_SOURCE_ID; {error})"
            )),
        }
    }
}
