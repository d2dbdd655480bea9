//! The `summary key=value …` lines every run prints, and their parsing.

use std::fmt;

/// One `summary key=value …` line: ordered fields, the first one being `run=<name>`.
///
/// ```
/// use dcron_bench::summary::Summary;
/// let s = Summary::new("latency").field("system", "dcron").field("fires", 10);
/// assert_eq!(s.to_string(), "summary run=latency system=dcron fires=10");
/// let back = Summary::parse(&s.to_string()).unwrap();
/// assert_eq!(back.get("fires"), Some("10"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    fields: Vec<(String, String)>,
}

impl Summary {
    /// A summary for the run `run`.
    pub fn new(run: &str) -> Self {
        Summary {
            fields: vec![("run".to_string(), run.to_string())],
        }
    }

    /// Adds a field (builder style). Spaces in the value are replaced by `_` so the line stays
    /// parseable.
    pub fn field(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.push(key, value);
        self
    }

    /// Adds a field.
    pub fn push(&mut self, key: &str, value: impl fmt::Display) {
        let value = value.to_string().replace(char::is_whitespace, "_");
        self.fields.push((key.to_string(), value));
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` as a number, if present and numeric.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// Every field, in order.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// Parses a line printed by [`Summary`]'s `Display`; `None` when it is not a summary line.
    pub fn parse(line: &str) -> Option<Summary> {
        let rest = line.trim().strip_prefix("summary ")?;
        let mut fields = Vec::new();
        for word in rest.split_whitespace() {
            let (k, v) = word.split_once('=')?;
            fields.push((k.to_string(), v.to_string()));
        }
        Some(Summary { fields })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("summary")?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Formats microseconds as milliseconds with three decimals.
pub fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

/// Formats a ratio `a / b` with two decimals, `inf` when `b` is zero and `a` is not.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else if a > 0.0 {
        "inf".to_string()
    } else {
        "nan".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sanitising() {
        let s = Summary::new("x").field("a b", 1).field("v", "two words");
        let line = s.to_string();
        assert_eq!(line, "summary run=x a b=1 v=two_words");
        assert_eq!(
            Summary::parse("summary run=x v=1").unwrap().number("v"),
            Some(1.0)
        );
        assert!(Summary::parse("not a summary").is_none());
        assert!(Summary::parse("summary novalue").is_none());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(10.0, 4.0), "2.50");
        assert_eq!(ratio(1.0, 0.0), "inf");
        assert_eq!(ratio(0.0, 0.0), "nan");
        assert_eq!(ms(1500.0), "1.500");
    }
}
