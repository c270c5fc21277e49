//! The config with its secrets masked, for `check` and the logs.

use super::url::{is_secret_name, mask_url};
use super::{Config, ExporterConfig, ExporterProtocol};

impl Config {
    /// A copy whose exporter URLs show neither a password nor a secret query value, an
    /// http/protobuf endpoint shown as the URL posted to (with `/v1/traces`), and header
    /// values shown only when [`header_is_secret`] says they cannot be credentials
    /// (passwords and the other header values are [`Secret`](super::Secret)s, shown as `***`).
    pub fn masked(&self) -> Self {
        let mut masked = self.clone();
        masked.exporters.values_mut().for_each(mask_exporter);
        masked
    }
}

/// Masks one exporter's URLs and secret header values, and those of a loadbalancing
/// exporter's backends.
fn mask_exporter(exporter: &mut ExporterConfig) {
    // The same URL again when read back: `/v1/traces` is not appended twice.
    if exporter.protocol == ExporterProtocol::HttpProtobuf && exporter.endpoint.is_some() {
        exporter.endpoint = exporter.export_url();
    }
    for url in [&mut exporter.endpoint, &mut exporter.traces_endpoint]
        .into_iter()
        .flatten()
    {
        *url = mask_url(url);
    }
    for (name, value) in &mut exporter.headers {
        if !header_is_secret(name, exporter.substituted_headers.contains(name)) {
            *value = value.readable();
        }
    }
    if let Some(backends) = exporter
        .resolver
        .as_mut()
        .and_then(|r| r.static_backends.as_mut())
    {
        for backend in backends {
            *backend = mask_url(backend);
        }
    }
    if let Some(inner) = &mut exporter.exporter {
        mask_exporter(inner);
    }
}

/// Whether the value of header `name` may be a credential, so `check` masks it: one read
/// from the environment (`${VAR}`), or a name like `authorization`, `proxy-authorization`,
/// `x-api-key`, `*token*`, `*secret*`, `*password*`, `cookie`; a tenant header such as
/// `x-scope-orgid` is shown.
fn header_is_secret(name: &str, substituted: bool) -> bool {
    substituted || is_secret_name(name) || name.to_ascii_lowercase().contains("cookie")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_header_values_that_can_be_credentials_are_masked() {
        let table = [
            ("authorization", false, true),
            ("Proxy-Authorization", false, true),
            ("x-api-key", false, true),
            ("x_api_key", false, true),
            ("x-apikey-id", false, true),
            ("x-auth-token", false, true),
            ("x-client-secret", false, true),
            ("x-password", false, true),
            ("cookie", false, true),
            ("set-cookie", false, true),
            ("x-scope-orgid", false, false),
            ("x-tenant", false, false),
            ("x-tenant", true, true),
        ];
        for (name, substituted, secret) in table {
            assert_eq!(header_is_secret(name, substituted), secret, "{name}");
        }
    }
}
