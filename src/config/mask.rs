//! The config with its secrets masked, for `check` and the logs.

use super::Config;

impl Config {
    /// A copy with every header value, password and URL password replaced by `***`.
    pub fn masked(&self) -> Self {
        let mut masked = self.clone();
        for exporter in masked.exporters.values_mut() {
            for value in exporter.headers.values_mut() {
                *value = MASK.into();
            }
            if let Some(basic) = exporter.auth.as_mut().and_then(|a| a.basic.as_mut()) {
                basic.password = MASK.into();
            }
            for url in [&mut exporter.endpoint, &mut exporter.traces_endpoint]
                .into_iter()
                .flatten()
            {
                *url = mask_url_credentials(url);
            }
        }
        masked
    }
}

const MASK: &str = "***";

/// Replaces `user:password@` in a URL by `user:***@`.
fn mask_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:{MASK}@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}
