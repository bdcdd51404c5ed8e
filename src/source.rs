//! Who is sending: a source id and instance id, by hand or from a Cloud
//! Foundry app container's environment.

use crate::error::{Error, Result};

/// The identity stamped on envelopes that do not set their own: the source
/// id (an app GUID or a component name) and the instance id.
///
/// ```
/// use loggregator::SourceInfo;
///
/// let source = SourceInfo::new("my-component", "0");
/// assert_eq!(source.source_id(), "my-component");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    source_id: String,
    instance_id: String,
}

impl SourceInfo {
    /// A source id and instance id.
    ///
    /// ```
    /// let source = loggregator::SourceInfo::new("app-guid", "2");
    /// assert_eq!(source.instance_id(), "2");
    /// ```
    pub fn new(source_id: impl Into<String>, instance_id: impl Into<String>) -> SourceInfo {
        SourceInfo {
            source_id: source_id.into(),
            instance_id: instance_id.into(),
        }
    }

    /// Reads the identity of the app instance this process runs as in a Cloud
    /// Foundry container: `application_id` from `VCAP_APPLICATION` and the
    /// index from `CF_INSTANCE_INDEX` (or `VCAP_APPLICATION`'s
    /// `instance_index`).
    ///
    /// The agents run on the VMs, not in app containers, and apps normally
    /// log through stdout and stderr, which the platform forwards. This is
    /// for the few processes in an app container that talk to an agent
    /// directly: a sidecar an operator has given Loggregator certificates
    /// and an address that reaches the VM's agent. To send on an app's
    /// behalf from elsewhere, use [`SourceInfo::new`] with its GUID.
    ///
    /// Outside Cloud Foundry, or when a variable is malformed, it returns
    /// [`Error::Config`] saying which variable and why; it never guesses.
    ///
    /// ```
    /// match loggregator::SourceInfo::from_cf_env() {
    ///     Ok(source) => println!("running as {} #{}", source.source_id(), source.instance_id()),
    ///     Err(error) => println!("not in Cloud Foundry: {error}"),
    /// }
    /// ```
    pub fn from_cf_env() -> Result<SourceInfo> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_cf_env`](Self::from_cf_env) over any lookup of variables.
    pub(crate) fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<SourceInfo> {
        let problem = |problem: String| Error::Config {
            setting: "VCAP_APPLICATION",
            problem,
        };
        let Some(vcap) = var("VCAP_APPLICATION") else {
            return Err(problem(
                "is not set: not running in a Cloud Foundry app container".into(),
            ));
        };
        let application: serde_json::Value =
            serde_json::from_str(&vcap).map_err(|e| problem(format!("is not JSON: {e}")))?;
        let source_id = match application.get("application_id") {
            Some(serde_json::Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err(problem("has no application_id".into())),
        };
        let instance_id = match var("CF_INSTANCE_INDEX") {
            Some(index) => match index.trim().parse::<u64>() {
                Ok(index) => index.to_string(),
                Err(_) => {
                    return Err(Error::Config {
                        setting: "CF_INSTANCE_INDEX",
                        problem: format!("{index:?} is not an instance index"),
                    });
                }
            },
            None => match application.get("instance_index").and_then(|i| i.as_u64()) {
                Some(index) => index.to_string(),
                None => {
                    return Err(Error::Config {
                        setting: "CF_INSTANCE_INDEX",
                        problem: "is not set, and VCAP_APPLICATION has no instance_index".into(),
                    });
                }
            },
        };
        Ok(SourceInfo {
            source_id,
            instance_id,
        })
    }

    /// The source id.
    ///
    /// ```
    /// assert_eq!(loggregator::SourceInfo::new("a", "0").source_id(), "a");
    /// ```
    pub fn source_id(&self) -> &str {
        &self.source_id
    }

    /// The instance id.
    ///
    /// ```
    /// assert_eq!(loggregator::SourceInfo::new("a", "0").instance_id(), "0");
    /// ```
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Fills in the source and instance ids an envelope left empty: the
    /// reference the client's encoded stamp is tested against.
    #[cfg(feature = "testing")]
    pub(crate) fn stamp(&self, envelope: &mut crate::proto::envelope::Envelope) {
        if envelope.source_id.is_empty() {
            envelope.source_id.clone_from(&self.source_id);
        }
        if envelope.instance_id.is_empty() {
            envelope.instance_id.clone_from(&self.instance_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<SourceInfo> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SourceInfo::from_vars(|name| vars.get(name).cloned())
    }

    const VCAP: &str = r#"{"application_id":"9d7d2b7c-2f4b-4d1a-9b1e-0c2f3a4b5c6d","application_name":"my-app","instance_index":4}"#;

    #[test]
    fn reads_the_app_guid_and_the_instance_index() {
        let source = from(&[("VCAP_APPLICATION", VCAP), ("CF_INSTANCE_INDEX", "2")]).unwrap();
        assert_eq!(
            source,
            SourceInfo::new("9d7d2b7c-2f4b-4d1a-9b1e-0c2f3a4b5c6d", "2")
        );
        let source = from(&[("VCAP_APPLICATION", VCAP)]).unwrap();
        assert_eq!(source.instance_id(), "4");
    }

    #[test]
    fn outside_cloud_foundry_or_with_bad_variables_it_says_which() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "VCAP_APPLICATION"),
            (&[("VCAP_APPLICATION", "not json")], "VCAP_APPLICATION"),
            (
                &[("VCAP_APPLICATION", r#"{"name":"x"}"#)],
                "VCAP_APPLICATION",
            ),
            (
                &[("VCAP_APPLICATION", VCAP), ("CF_INSTANCE_INDEX", "two")],
                "CF_INSTANCE_INDEX",
            ),
            (
                &[("VCAP_APPLICATION", r#"{"application_id":"a"}"#)],
                "CF_INSTANCE_INDEX",
            ),
        ];
        for (vars, setting) in cases {
            match from(vars) {
                Err(Error::Config { setting: named, .. }) => {
                    assert_eq!(named, *setting, "{vars:?}")
                }
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }
}
