//! Exporter URLs as they may be shown (credentials and secret query values masked) and as
//! the HTTP client gets them (no `user:password@`: that goes in an `Authorization` header).

use super::secret::{MASK, Secret};

/// Words that make a query parameter's value a secret, matched anywhere in its name
/// ignoring case: `api_key`, `access_token`, `X-Amz-Signature`, `sig`, `password`, ...
const SECRET_WORDS: [&str; 9] = [
    "key",
    "token",
    "secret",
    "pass",
    "pwd",
    "auth",
    "sig",
    "credential",
    "session",
];

/// `url` with its userinfo masked (`user:***@`, or `***@` when it has no `:`) and the
/// value of every secret-looking query parameter (and every bare query entry) masked.
pub fn mask_url(url: &str) -> String {
    let (before_query, query) = match url.find(['?', '#']) {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (scheme, rest) = match before_query.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), before_query),
    };
    // The last `@` before the query ends the userinfo (a raw `@` in a password included).
    let shown = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:{MASK}@{host}"),
            None => format!("{scheme}{MASK}@{host}"),
        },
        None => format!("{scheme}{rest}"),
    };
    shown + &mask_query(query)
}

/// `?a=1&api_key=x#frag` → `?a=1&api_key=***#frag`; the fragment is kept.
fn mask_query(query_and_fragment: &str) -> String {
    let Some(query) = query_and_fragment.strip_prefix('?') else {
        return query_and_fragment.to_owned();
    };
    let (query, fragment) = match query.find('#') {
        Some(i) => query.split_at(i),
        None => (query, ""),
    };
    let entries: Vec<String> = query
        .split('&')
        .map(|entry| match entry.split_once('=') {
            Some((name, _)) if is_secret_name(name) => format!("{name}={MASK}"),
            Some(_) => entry.to_owned(),
            None if entry.is_empty() => String::new(),
            None => MASK.to_owned(),
        })
        .collect();
    format!("?{}{fragment}", entries.join("&"))
}

/// Whether a query parameter (or config key) named `name` likely carries a credential.
pub(super) fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// Credentials written in a URL (`https://user:password@host`), percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlCredentials {
    /// The user name (not a secret).
    pub username: String,
    /// The password; empty when the URL gives none.
    pub password: Secret,
}

/// Splits `url` into the URL without its `user:password@` and those credentials.
pub fn split_userinfo(url: &str) -> (String, Option<UrlCredentials>) {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let Some((userinfo, _)) = url[authority_start..authority_end].rsplit_once('@') else {
        return (url.to_owned(), None);
    };
    let bare = format!(
        "{}{}",
        &url[..authority_start],
        &url[authority_start + userinfo.len() + 1..]
    );
    let (username, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = UrlCredentials {
        username: decode(username),
        password: Secret::new(decode(password)),
    };
    (bare, Some(credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked_keeping_the_user() {
        assert_eq!(
            mask_url("https://user:s3cret@otlp.example.net/otlp"),
            "https://user:***@otlp.example.net/otlp"
        );
        assert_eq!(
            mask_url("https://glc_token@otlp.example.net"),
            "https://***@otlp.example.net"
        );
        assert_eq!(
            mask_url("https://u:p@ss@host:443/x"),
            "https://u:***@host:443/x",
            "a raw @ in the password"
        );
        assert_eq!(
            mask_url("http://tempo:4318/v1/traces"),
            "http://tempo:4318/v1/traces"
        );
    }

    #[test]
    fn secret_looking_query_values_are_masked_and_others_kept() {
        assert_eq!(
            mask_url("https://h/v1/traces?api_key=abc&tenant=t1&token=x"),
            "https://h/v1/traces?api_key=***&tenant=t1&token=***"
        );
        assert_eq!(
            mask_url("https://s3/b?X-Amz-Signature=f00&X-Amz-Credential=AK&X-Amz-Date=1"),
            "https://s3/b?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=1"
        );
        for name in ["password", "PWD", "apikey", "access_token", "sig", "Auth"] {
            assert_eq!(
                mask_url(&format!("http://h?{name}=v4lue#f")),
                format!("http://h?{name}=***#f")
            );
        }
        assert_eq!(
            mask_url("http://h/p?bareSecret&a=1"),
            "http://h/p?***&a=1",
            "a bare entry may be a token"
        );
        assert_eq!(
            mask_url("https://user:pw@h/p?key=v"),
            "https://user:***@h/p?key=***"
        );
    }

    #[test]
    fn userinfo_is_split_off_and_decoded() {
        let (bare, credentials) =
            split_userinfo("https://inst%40x:pa%3Ass@otlp.example.net:443/otlp?key=1");
        assert_eq!(bare, "https://otlp.example.net:443/otlp?key=1");
        let credentials = credentials.expect("credentials");
        assert_eq!(credentials.username, "inst@x");
        assert_eq!(credentials.password.expose(), "pa:ss");
        let (bare, credentials) = split_userinfo("https://token@h");
        assert_eq!(bare, "https://h");
        assert_eq!(credentials.map(|c| c.password), Some(Secret::default()));
        let (bare, credentials) = split_userinfo("http://h:4317/p?email=a@b");
        assert_eq!(bare, "http://h:4317/p?email=a@b");
        assert_eq!(credentials, None);
    }
}
