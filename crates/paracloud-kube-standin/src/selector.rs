//! Label and field selectors of list, watch and delete-collection requests.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Splits on the commas outside parentheses.
fn terms(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn set(values: &str) -> Result<Vec<String>, ApiError> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: {values}")))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

impl Selector {
    /// A label selector: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`.
    pub fn labels(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in terms(text) {
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, values)) = term.split_once(" notin ") {
                Requirement::NotIn(key.trim().into(), set(values)?)
            } else if let Some((key, values)) = term.split_once(" in ") {
                Requirement::In(key.trim().into(), set(values)?)
            } else if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().into())
            } else if term
                .chars()
                .all(|c| c.is_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(term.into())
            } else {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: {term}"
                )));
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    /// A field selector: `path=value`, `path==value`, `path!=value` over dotted paths
    /// (`metadata.name`, `status.phase`). The real server takes only the fields each kind
    /// declares; this one takes any.
    pub fn fields(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in terms(text) {
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    /// Against the object's labels.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.matches(|key| labels.get(key).and_then(Value::as_str).map(String::from))
    }

    /// Against the object's fields (scalars as their text).
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|path| {
            let value = path.split('.').try_fold(object, |at, key| at.get(key));
            match value {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => Some(String::new()),
                Some(other) => Some(other.to_string()),
            }
        })
    }

    fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => lookup(k).as_ref() == Some(v),
            Requirement::NotEquals(k, v) => lookup(k).as_ref() != Some(v),
            Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => lookup(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_of_every_form() {
        let object = json!({"metadata": {"name": "a", "labels": {"app": "shop", "tier": "web"}}});
        for (text, expected) in [
            ("app=shop", true),
            ("app==shop,tier=web", true),
            ("app=other", false),
            ("app!=other", true),
            ("tier in (web, api)", true),
            ("tier notin (web)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("", true),
        ] {
            assert_eq!(
                Selector::labels(text).unwrap().matches_labels(&object),
                expected,
                "{text}"
            );
        }
        assert!(Selector::labels("a in x").is_err());
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let object =
            json!({"metadata": {"name": "a", "namespace": "ns"}, "status": {"phase": "Running"}});
        let s = Selector::fields("metadata.name=a,status.phase!=Pending").unwrap();
        assert!(s.matches_fields(&object));
        assert!(!Selector::fields("metadata.namespace=other")
            .unwrap()
            .matches_fields(&object));
        assert!(Selector::fields("nonsense").is_err());
    }
}
