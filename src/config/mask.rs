//! The config with its secrets masked, for `check` and the logs.

use super::Config;
use super::url::mask_url;

impl Config {
    /// A copy whose exporter URLs show neither a password nor a secret query value
    /// (header values and passwords are [`Secret`](super::Secret)s, shown as `***` anyway).
    pub fn masked(&self) -> Self {
        let mut masked = self.clone();
        for exporter in masked.exporters.values_mut() {
            for url in [&mut exporter.endpoint, &mut exporter.traces_endpoint]
                .into_iter()
                .flatten()
            {
                *url = mask_url(url);
            }
        }
        masked
    }
}
