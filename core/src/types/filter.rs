//! Filters: what narrows a search or a listing, the validity rule (current, or as of a time)
//! and conditions on a memory's metadata.
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Memory, MemoryKind, Role};
use crate::error::{Error, Result};

/// Narrows a search or a listing. Empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only this session.
    pub session: Option<String>,
    /// Only these kinds.
    #[serde(default)]
    pub kinds: Vec<MemoryKind>,
    /// Only these roles (memories with no role never match a role filter).
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Only memories carrying every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// What was true at this time: memories written by then that had not been superseded or
    /// expired by then. Absent: the memories current now.
    #[serde(default)]
    pub as_of: Option<DateTime<Utc>>,
    /// Superseded memories too (the whole history); expired ones never.
    #[serde(default)]
    pub include_superseded: bool,
    /// Conditions on the memory's metadata, all of which must hold.
    #[serde(default)]
    pub metadata: Vec<MetadataCondition>,
}

/// A comparison in a [`MetadataCondition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataOp {
    /// Equal (numbers by value: `1` equals `1.0`).
    Eq,
    /// Absent or not equal.
    Ne,
    /// Equal to one of the values of an array.
    In,
    /// Greater than a number, or later than a time (an RFC 3339 string).
    Gt,
    /// Greater than or equal (numbers and times).
    Gte,
    /// Less than (numbers and times).
    Lt,
    /// Less than or equal (numbers and times).
    Lte,
    /// An array holding the value, or a string holding it as a substring.
    Contains,
    /// Present and not null (`true`), or absent or null (`false`).
    Exists,
}

impl MetadataOp {
    /// The name used in every API (`eq`, `in`, `gt`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Ne => "ne",
            Self::In => "in",
            Self::Gt => "gt",
            Self::Gte => "gte",
            Self::Lt => "lt",
            Self::Lte => "lte",
            Self::Contains => "contains",
            Self::Exists => "exists",
        }
    }
}

impl std::str::FromStr for MetadataOp {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "in" => Self::In,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "contains" => Self::Contains,
            "exists" => Self::Exists,
            other => {
                return Err(Error::invalid(format!(
                    "unknown metadata operator `{other}` \
                     (eq, ne, in, gt, gte, lt, lte, contains, exists)"
                )));
            }
        })
    }
}

/// One condition on a memory's metadata: the value at `key` (a dotted path into nested
/// objects, such as `source.app`) compared with `value` by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataCondition {
    /// Dotted path into the metadata object.
    pub key: String,
    /// The comparison.
    pub op: MetadataOp,
    /// What to compare with: any JSON for `eq`/`ne`/`contains`, an array for `in`, a number
    /// or an RFC 3339 time for `gt`/`gte`/`lt`/`lte`, a boolean for `exists`.
    #[serde(default)]
    pub value: Value,
}

impl FromStr for MetadataCondition {
    type Err = Error;

    /// `KEY OP VALUE`, as the CLI takes it: `project eq apollo`, `priority gte 2`,
    /// `status in ["open","blocked"]`, `due lt 2026-12-24T00:00:00Z`, `archived exists false`.
    /// The value is read as JSON when it is JSON, and as a string otherwise.
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.trim().splitn(3, char::is_whitespace);
        let (Some(key), Some(op)) = (parts.next(), parts.next()) else {
            return Err(Error::invalid(format!(
                "metadata condition `{s}`: expected `KEY OP VALUE` (OP one of eq, ne, in, gt, \
                 gte, lt, lte, contains, exists)"
            )));
        };
        let raw = parts.next().unwrap_or("").trim();
        let value = if raw.is_empty() {
            Value::Bool(true)
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
        };
        let c = Self::new(key, op.parse()?, value);
        c.validate()?;
        Ok(c)
    }
}

/// A number or a time, for ordered comparisons.
enum Ordered {
    Number(f64),
    Time(DateTime<Utc>),
}

impl Ordered {
    /// Numbers with numbers and times with times; anything else has no order.
    fn compare(&self, other: &Ordered) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Self::Number(a), Self::Number(b)) => a.partial_cmp(b),
            (Self::Time(a), Self::Time(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

fn ordered(v: &Value) -> Option<Ordered> {
    match v {
        Value::Number(n) => n.as_f64().map(Ordered::Number),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| Ordered::Time(t.with_timezone(&Utc))),
        _ => None,
    }
}

/// JSON equality with numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl MetadataCondition {
    /// A condition (for tests and callers that build filters in code).
    pub fn new(key: impl Into<String>, op: MetadataOp, value: Value) -> Self {
        Self {
            key: key.into(),
            op,
            value,
        }
    }

    /// Checks the condition's shape: a key, and a value that fits the operator.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| {
            Err(Error::invalid(format!(
                "metadata condition on `{}` ({}): {why}",
                self.key,
                self.op.as_str()
            )))
        };
        if self.key.is_empty() || self.key.len() > 256 || self.key.split('.').any(str::is_empty) {
            return bad("the key must be a dotted path of 1 to 256 bytes with no empty part");
        }
        match self.op {
            MetadataOp::In if !self.value.is_array() => bad("the value must be an array"),
            MetadataOp::In if self.value.as_array().is_some_and(|a| a.len() > 1000) => {
                bad("at most 1000 values")
            }
            MetadataOp::Gt | MetadataOp::Gte | MetadataOp::Lt | MetadataOp::Lte
                if ordered(&self.value).is_none() =>
            {
                bad("the value must be a number or an RFC 3339 time")
            }
            MetadataOp::Exists if !self.value.is_boolean() => bad("the value must be a boolean"),
            _ => Ok(()),
        }
    }

    /// Whether `metadata` (a memory's metadata object) satisfies the condition.
    pub fn matches(&self, metadata: &Value) -> bool {
        let mut at = Some(metadata);
        for part in self.key.split('.') {
            at = at.and_then(|v| v.get(part));
        }
        let found = at.filter(|v| !v.is_null());
        match self.op {
            MetadataOp::Exists => found.is_some() == self.value.as_bool().unwrap_or(true),
            MetadataOp::Ne => found.is_none_or(|v| !json_eq(v, &self.value)),
            op => {
                let Some(v) = found else { return false };
                match op {
                    MetadataOp::Eq => json_eq(v, &self.value),
                    MetadataOp::In => self
                        .value
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| json_eq(v, x))),
                    MetadataOp::Contains => match (v, &self.value) {
                        (Value::Array(items), x) => items.iter().any(|i| json_eq(i, x)),
                        (Value::String(s), Value::String(x)) => s.contains(x.as_str()),
                        _ => false,
                    },
                    MetadataOp::Gt | MetadataOp::Gte | MetadataOp::Lt | MetadataOp::Lte => {
                        use std::cmp::Ordering::{Equal, Greater, Less};
                        let (Some(a), Some(b)) = (ordered(v), ordered(&self.value)) else {
                            return false;
                        };
                        matches!(
                            (op, a.compare(&b)),
                            (MetadataOp::Gt, Some(Greater))
                                | (MetadataOp::Lt, Some(Less))
                                | (MetadataOp::Gte, Some(Greater | Equal))
                                | (MetadataOp::Lte, Some(Less | Equal))
                        )
                    }
                    MetadataOp::Exists | MetadataOp::Ne => unreachable!("handled above"),
                }
            }
        }
    }
}

impl Filter {
    /// Whether a memory passes the filter (the rule the stores apply in SQL, for memories
    /// reached another way, such as a hit's neighbours).
    pub fn matches(&self, m: &Memory) -> bool {
        self.matches_at(m, Utc::now())
    }

    /// [`Filter::matches`] with "now" given (for expiry when the filter names no time).
    pub fn matches_at(&self, m: &Memory, now: DateTime<Utc>) -> bool {
        self.session
            .as_ref()
            .is_none_or(|s| m.session.as_ref() == Some(s))
            && (self.kinds.is_empty() || self.kinds.contains(&m.kind))
            && (self.roles.is_empty() || m.role.is_some_and(|r| self.roles.contains(&r)))
            && self.tags.iter().all(|t| m.tags.contains(t))
            && self.since.is_none_or(|t| m.created_at >= t)
            && self.until.is_none_or(|t| m.created_at < t)
            && self.valid_at(m, now)
            && self.metadata.iter().all(|c| c.matches(&m.metadata))
    }

    /// Whether a memory passes the filter's validity rule (the stores apply the same rule in
    /// SQL): without `as_of`, not superseded and not expired now; with it, written by then
    /// and neither superseded nor expired by then. `include_superseded` lifts the rule on
    /// replacement, never the one on expiry.
    pub fn valid(&self, m: &Memory) -> bool {
        self.valid_at(m, Utc::now())
    }

    /// [`Filter::valid`] with "now" given.
    pub fn valid_at(&self, m: &Memory, now: DateTime<Utc>) -> bool {
        match self.as_of {
            None => {
                (self.include_superseded || m.superseded_at.is_none())
                    && m.expires_at.is_none_or(|e| e > now)
            }
            Some(t) => {
                m.created_at <= t
                    && (self.include_superseded || m.superseded_at.is_none_or(|s| s > t))
                    && m.expires_at.is_none_or(|e| e > t)
            }
        }
    }

    /// The filter narrowed to `[since, until)` as well; `None` when nothing can pass.
    pub fn within(&self, since: DateTime<Utc>, until: DateTime<Utc>) -> Option<Filter> {
        let since = self.since.map_or(since, |s| s.max(since));
        let until = self.until.map_or(until, |u| u.min(until));
        (since < until).then(|| Filter {
            since: Some(since),
            until: Some(until),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn metadata_conditions_parse_from_the_cli_form() {
        let c: MetadataCondition = "priority gte 2".parse().unwrap();
        assert_eq!(
            c,
            MetadataCondition::new("priority", MetadataOp::Gte, json!(2))
        );
        let c: MetadataCondition = r#"status in ["open", "blocked"]"#.parse().unwrap();
        assert_eq!(c.value, json!(["open", "blocked"]));
        let c: MetadataCondition = "project eq apollo 11".parse().unwrap();
        assert_eq!(c.value, json!("apollo 11"), "a plain string when not JSON");
        let c: MetadataCondition = "source.app exists".parse().unwrap();
        assert_eq!((c.op, c.value), (MetadataOp::Exists, json!(true)));
        for bad in [
            "priority",
            "priority bigger 2",
            "priority gt soon",
            "p in 3",
            ".a eq 1",
        ] {
            let err = bad.parse::<MetadataCondition>().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad}: {err}");
        }
    }

    #[test]
    fn metadata_conditions_compare_numbers_times_arrays_and_paths() {
        let m = json!({
            "n": 2, "f": 2.5, "due": "2026-12-24T00:00:00Z", "tags": ["a", 1],
            "text": "hello world", "deep": {"er": {"x": null, "y": false}}
        });
        let holds = |key: &str, op: MetadataOp, value: Value| {
            MetadataCondition::new(key, op, value).matches(&m)
        };
        assert!(holds("n", MetadataOp::Eq, json!(2.0)));
        assert!(holds("n", MetadataOp::Lt, json!(2.5)) && !holds("f", MetadataOp::Lt, json!(2.5)));
        assert!(holds("f", MetadataOp::Lte, json!(2.5)) && holds("f", MetadataOp::Gt, json!(2)));
        assert!(!holds(
            "due",
            MetadataOp::Gt,
            json!("2026-12-23T23:00:00-02:00")
        ));
        assert!(holds(
            "due",
            MetadataOp::Lt,
            json!("2026-12-24T01:00:00+00:00")
        ));
        // A number is not compared with a time, nor a string with a number.
        assert!(
            !holds("due", MetadataOp::Gt, json!(0)) && !holds("text", MetadataOp::Gt, json!(0))
        );
        assert!(holds("tags", MetadataOp::Contains, json!(1)));
        assert!(holds("text", MetadataOp::Contains, json!("lo wo")));
        assert!(!holds("n", MetadataOp::Contains, json!(2)));
        assert!(
            holds("n", MetadataOp::In, json!([1, 2])) && !holds("n", MetadataOp::In, json!([]))
        );
        assert!(holds("deep.er.y", MetadataOp::Eq, json!(false)));
        // Null counts as absent.
        assert!(holds("deep.er.x", MetadataOp::Exists, json!(false)));
        assert!(
            holds("deep.er.x", MetadataOp::Ne, json!(1)) && holds("nope", MetadataOp::Ne, json!(1))
        );
        assert!(!holds("nope", MetadataOp::Eq, Value::Null));
        assert!(!MetadataCondition::new("n", MetadataOp::Eq, json!(2)).matches(&Value::Null));
    }

    #[test]
    fn validity_follows_as_of() {
        let t = |h: u32| chrono::TimeZone::with_ymd_and_hms(&Utc, 2024, 5, 1, h, 0, 0).unwrap();
        let m = Memory {
            id: 1,
            kind: MemoryKind::Fact,
            content: String::new(),
            session: None,
            message_id: None,
            summary_id: None,
            role: None,
            tags: vec![],
            metadata: Value::Null,
            importance: 0.5,
            emotion: None,
            created_at: t(1),
            updated_at: t(1),
            expires_at: Some(t(9)),
            supersedes: None,
            superseded_by: Some(2),
            superseded_at: Some(t(5)),
            key_for: None,
        };
        let at = |h: u32| Filter {
            as_of: Some(t(h)),
            ..Filter::default()
        };
        assert!(!at(0).valid(&m), "not written yet");
        assert!(at(1).valid(&m) && at(4).valid(&m));
        assert!(!at(5).valid(&m), "superseded");
        assert!(
            Filter {
                include_superseded: true,
                ..at(6)
            }
            .valid(&m)
        );
        assert!(
            !Filter {
                include_superseded: true,
                ..at(9)
            }
            .valid(&m),
            "expired"
        );
        assert!(!Filter::default().valid(&m), "superseded now");
        assert_eq!(m.current_at(t(3)), at(3).valid(&m));
    }
}
