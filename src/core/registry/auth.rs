//! Registry authentication: credentials, the `WWW-Authenticate` challenge, and the bearer-token
//! cache.
//!
//! The flow follows the distribution token spec: a request goes out with whatever we already
//! hold (nothing, basic credentials, or a cached bearer token); a 401 carries a challenge; for
//! `Bearer` we fetch a token from the challenge's realm (sending basic credentials if we have
//! any, anonymously otherwise), cache it until it expires, and retry the request once.

use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

/// What we may present to a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic { username: String, password: String },
}

impl fmt::Debug for Credentials {
    // Never print a password into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ****)"),
        }
    }
}

impl Credentials {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials::Basic { username: username.into(), password: password.into() }
    }

    /// The `Authorization` value for basic auth, if these are basic credentials.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Anonymous => None,
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
        }
    }
}

/// A bearer token handed to us ready-made (nydus-snapshotter's `registry_token`): presented on
/// every request until the registry rejects it, then the normal challenge flow takes over.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticToken(pub String);

impl fmt::Debug for StaticToken {
    // Never print a token into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(****)")
    }
}

impl StaticToken {
    /// A token that can go in an `Authorization` header: visible ASCII, no spaces.
    pub fn new(token: &str) -> Result<StaticToken, String> {
        let t = token.trim();
        if t.is_empty() {
            return Err("the token is empty".into());
        }
        if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!("the token holds {c:?}, which cannot go in an HTTP header"));
        }
        Ok(StaticToken(t.to_string()))
    }
}

/// One parsed challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: "bearer", "basic", ...
    pub scheme: String,
    /// Parameters with lowercased names, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235): one or more challenges, each a scheme followed
/// by comma-separated `name=value` pairs whose values may be quoted strings holding commas,
/// `=` and backslash escapes. Unparseable trailing junk ends the parse; what came before stays.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let b = header.as_bytes();
    let mut i = 0;
    let mut out: Vec<Challenge> = Vec::new();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c);
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            break; // junk
        }
        let token = &header[start..i];
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !out.is_empty() {
            // name=value belonging to the current challenge
            j += 1;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            let value = if j < b.len() && b[j] == b'"' {
                j += 1;
                let mut v = String::new();
                let mut closed = false;
                while j < b.len() {
                    match b[j] {
                        b'\\' if j + 1 < b.len() => {
                            v.push(b[j + 1] as char);
                            j += 2;
                        }
                        b'"' => {
                            j += 1;
                            closed = true;
                            break;
                        }
                        _ => {
                            // Keep multi-byte UTF-8 intact.
                            let ch = header[j..].chars().next().expect("char");
                            v.push(ch);
                            j += ch.len_utf8();
                        }
                    }
                }
                if !closed {
                    break;
                }
                v
            } else {
                let vs = j;
                while j < b.len() && (is_tchar(b[j]) || b[j] == b'=') {
                    j += 1;
                }
                header[vs..j].to_string()
            };
            out.last_mut().expect("challenge").params.push((token.to_ascii_lowercase(), value));
            i = j;
        } else {
            out.push(Challenge { scheme: token.to_ascii_lowercase(), params: Vec::new() });
            i = j;
            // token68 form (e.g. `Negotiate abc==`): not used by registries; skip it.
        }
    }
    out
}

/// A bearer token and when we stop trusting it.
#[derive(Clone)]
pub struct CachedToken {
    pub token: String,
    pub valid_until: Instant,
    /// Bumped on every new token, so concurrent 401s refresh only once.
    pub generation: u64,
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedToken(gen {}, valid for {:?})", self.generation, self.valid_until.saturating_duration_since(Instant::now()))
    }
}

impl CachedToken {
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// The token endpoint's JSON answer (distribution token spec; `access_token` is the OAuth2 name).
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// Default lifetime when the token server does not say (the spec's 60 s).
pub const DEFAULT_TOKEN_LIFETIME: u64 = 60;

impl TokenResponse {
    /// The token and how long to trust it. We stop using a token a little before it expires
    /// (a tenth of its life, at most 10 s) so it does not expire between check and use.
    pub fn into_token(self, generation: u64) -> Option<CachedToken> {
        let token = self.token.filter(|t| !t.is_empty()).or(self.access_token.filter(|t| !t.is_empty()))?;
        let life = self.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let margin = (life / 10).min(10);
        let valid_until = Instant::now() + Duration::from_secs(life.saturating_sub(margin).min(24 * 3600));
        Some(CachedToken { token, valid_until, generation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_with_commas_inside_quotes() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c[0].param("service"), Some("registry.example.com"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn parses_several_challenges_escapes_and_unquoted_values() {
        let c = parse_challenges(r#"Basic realm="say \"hi\", ok" , Bearer Realm=http://x/t, error="insufficient_scope""#);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"say "hi", ok"#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("http://x/t"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn junk_and_unterminated_quotes_do_not_panic() {
        for h in ["", "   ", "=", "Bearer realm=\"open", "Bearer ,,,, realm", "\u{e9}\u{e9}", "Bearer realm=\"\u{e9}\""] {
            let _ = parse_challenges(h);
        }
        assert_eq!(parse_challenges("Bearer realm=\"\u{e9}\"")[0].param("realm"), Some("\u{e9}"));
    }

    #[test]
    fn token_lifetime_and_debug_hide_secrets() {
        let t = TokenResponse { token: None, access_token: Some("abc".into()), expires_in: Some(300) }.into_token(1).unwrap();
        assert_eq!(t.token, "abc");
        assert!(t.is_fresh());
        assert!(t.valid_until > Instant::now() + Duration::from_secs(280));
        assert!(TokenResponse { token: Some(String::new()), access_token: None, expires_in: None }.into_token(1).is_none());
        assert!(!format!("{:?}", Credentials::basic("u", "secret")).contains("secret"));
        assert!(!format!("{t:?}").contains("abc"));
        let st = StaticToken::new(" tok.en-1 ").unwrap();
        assert_eq!(st.0, "tok.en-1");
        assert!(!format!("{st:?}").contains("tok"));
        assert!(StaticToken::new("").is_err() && StaticToken::new("a b").is_err() && StaticToken::new("a\nb").is_err());
    }
}
