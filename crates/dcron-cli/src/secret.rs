//! Credentials that are never printed: [`Secret`] and the [`Secrets`] scrubber.

use std::fmt;

/// A credential (password, token, or a URL that contains one). Its `Debug` and `Display` show
/// `***`; only [`Secret::expose`] gives the value, to hand it to a registry client.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the registry client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Every credential of one invocation, to remove them from any text before it is printed
/// (defence in depth: registry clients sometimes repeat what they were given in their errors).
#[derive(Clone, Default)]
pub struct Secrets(Vec<String>);

/// Values shorter than this are not searched for: replacing every `a` of a message because the
/// password is `a` would garble it without protecting anything.
const MIN_SCRUBBED_LEN: usize = 3;

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Secrets::default()
    }

    /// Adds a value (and its percent-encoded form, as it appears inside URLs).
    pub fn add(&mut self, value: &str) {
        if value.len() < MIN_SCRUBBED_LEN {
            return;
        }
        let encoded = percent_encode(value);
        for v in [value.to_string(), encoded] {
            if !self.0.contains(&v) {
                self.0.push(v);
            }
        }
        // Longest first, so a secret containing another one is replaced whole.
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

impl Secrets {
    /// The credentials present in raw command-line arguments (`--password`, `--token`, and the
    /// password of a `--registry` URL, as `--flag value` or `--flag=value`), to scrub messages
    /// written before the arguments are parsed (clap's errors).
    pub fn from_args<S: AsRef<str>>(args: &[S]) -> Self {
        let mut secrets = Secrets::new();
        let mut add = |flag: &str, value: &str| {
            if flag == "--registry" {
                if let Some(p) = crate::target::url_password(value) {
                    secrets.add(&p);
                }
            } else {
                secrets.add(value);
            }
        };
        for (i, arg) in args.iter().enumerate() {
            let arg = arg.as_ref();
            for flag in ["--password", "--token", "--console-token", "--registry"] {
                if arg == flag {
                    if let Some(next) = args.get(i + 1) {
                        add(flag, next.as_ref());
                    }
                } else if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                    add(flag, v);
                }
            }
        }
        secrets
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

/// Percent-encodes everything but unreserved URL characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_never_formatted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s} {s:#?}"), "*** *** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secrets_from_raw_arguments() {
        let args = [
            "dcronctl",
            "--registry",
            "redis://u:url-secret@h",
            "--password=flag-secret",
            "--token",
            "tok-secret",
            "nodes",
            "--console-token=console-secret",
        ];
        let secrets = Secrets::from_args(&args);
        assert_eq!(
            secrets.scrub("url-secret flag-secret tok-secret nodes console-secret"),
            "*** *** *** nodes ***"
        );
    }

    #[test]
    fn scrubber_replaces_plain_and_encoded_forms() {
        let mut secrets = Secrets::new();
        secrets.add("p@ss word");
        secrets.add("ab"); // too short to search for
        let text = "failed for redis://u:p%40ss%20word@h and p@ss word; ab stays";
        assert_eq!(
            secrets.scrub(text),
            "failed for redis://u:***@h and ***; ab stays"
        );
        assert!(!format!("{secrets:?}").contains("word"));
    }
}
