//! Replication left out of the build (feature `replication` off): no
//! [`RemoteUrl`] can be made (its only field is private and `parse`
//! refuses every URL), so no store is ever replicated, and the
//! [`Uploader`] never has a replica to run.

use std::sync::Arc;

use super::queue::Replica;
use super::ReplicationConfig;
use crate::error::{Error, Result};

/// An object-store URL. Without the `replication` feature none exists:
/// [`parse`](Self::parse) refuses every URL, naming the feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    _none: (),
}

impl RemoteUrl {
    /// Refuses `text`: this build replicates nowhere.
    pub fn parse(text: &str) -> Result<Self> {
        Err(Error::InvalidRemote {
            url: text.to_string(),
            reason: "this build has no replication: build continuous-backup with the `replication` feature"
                .into(),
        })
    }

    /// Whether `text` looks like a URL rather than a local path.
    pub fn is_url(text: &str) -> bool {
        text.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
        })
    }

    /// The URL of the dir `name` below this one.
    pub fn join(&self, _name: &str) -> RemoteUrl {
        self.clone()
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(no replication in this build)")
    }
}

/// The uploader, without replication: it never starts.
pub(crate) struct Uploader;

impl Uploader {
    pub fn new(_config: ReplicationConfig) -> Uploader {
        Uploader
    }

    pub fn arbiter(&self) -> Option<actix_rt::ArbiterHandle> {
        None
    }

    pub fn client(&self, remote: &RemoteUrl) -> Result<()> {
        RemoteUrl::parse(&remote.to_string()).map(|_| ())
    }

    pub fn replicate(&mut self, replica: Arc<Replica>) -> Result<()> {
        self.client(&replica.remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn a_url_is_refused_naming_the_feature() {
        let err = RemoteUrl::parse("file:///tmp/far").unwrap_err();
        assert!(err.to_string().contains("`replication` feature"), "{err}");
        let config = Config {
            replication: ReplicationConfig {
                url: Some("s3://bucket/node1".into()),
                ..ReplicationConfig::default()
            },
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(Error::InvalidRemote { .. })));
    }
}
