//! Kubernetes label selectors (apimachinery `labels`): the string form used in `?labelSelector=`
//! and `kubectl -l`, the structured `LabelSelector` (matchLabels / matchExpressions), and matching.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use thiserror::Error;

use crate::validation::{is_qualified_name, is_valid_label_value};

/// A selector failed to parse or names an invalid key/value.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match &self.op {
            Op::Eq(want) => v == Some(want),
            Op::NotEq(want) => v != Some(want),
            Op::In(set) => v.is_some_and(|v| set.contains(v)),
            Op::NotIn(set) => !v.is_some_and(|v| set.contains(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::Gt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Op::Lt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        }
    }
}

/// A conjunction of requirements. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Matches against an optional label map, as found in `metadata.labels`.
    pub fn matches_opt(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        match labels {
            Some(l) => self.matches(l),
            None => self.matches(&BTreeMap::new()),
        }
    }

    /// Parses the string form (`a=b,c!=d,e in (x,y),!f,g`).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            s: s.as_bytes(),
            i: 0,
        };
        let mut requirements = Vec::new();
        p.skip_ws();
        if p.at_end() {
            return Ok(Self::default());
        }
        loop {
            requirements.push(p.requirement()?);
            p.skip_ws();
            if p.at_end() {
                break;
            }
            if !p.eat(b',') {
                return Err(SelectorError(format!(
                    "unable to parse requirement: found '{}', expected: ','",
                    p.rest()
                )));
            }
        }
        Ok(Self { requirements })
    }

    /// Converts a structured `LabelSelector`, validating it as the API server does.
    pub fn from_label_selector(ls: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in ls.match_labels.iter().flatten() {
            check_key(k)?;
            check_value(v)?;
            requirements.push(Requirement {
                key: k.clone(),
                op: Op::Eq(v.clone()),
            });
        }
        for e in ls.match_expressions.iter().flatten() {
            check_key(&e.key)?;
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(SelectorError(format!(
                            "for 'in', 'notin' operators, values set can't be empty (key {})",
                            e.key
                        )));
                    }
                    for v in &values {
                        check_value(v)?;
                    }
                    if e.operator == "In" {
                        Op::In(values)
                    } else {
                        Op::NotIn(values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(SelectorError(format!(
                            "values set must be empty for exists and does not exist (key {})",
                            e.key
                        )));
                    }
                    if e.operator == "Exists" {
                        Op::Exists
                    } else {
                        Op::DoesNotExist
                    }
                }
                other => {
                    return Err(SelectorError(format!(
                        "{other:?} is not a valid label selector operator"
                    )))
                }
            };
            requirements.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        Ok(Self { requirements })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match &r.op {
                Op::Eq(v) => format!("{}={}", r.key, v),
                Op::NotEq(v) => format!("{}!={}", r.key, v),
                Op::In(vs) => format!("{} in ({})", r.key, vs.join(",")),
                Op::NotIn(vs) => format!("{} notin ({})", r.key, vs.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
                Op::Gt(n) => format!("{}>{}", r.key, n),
                Op::Lt(n) => format!("{}<{}", r.key, n),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn check_key(k: &str) -> Result<(), SelectorError> {
    if let Err(e) = is_qualified_name(k) {
        return Err(SelectorError(format!("invalid label key {k:?}: {e}")));
    }
    Ok(())
}

fn check_value(v: &str) -> Result<(), SelectorError> {
    if let Err(e) = is_valid_label_value(v) {
        return Err(SelectorError(format!("invalid label value: {v:?}: {e}")));
    }
    Ok(())
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }
    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.i.min(self.s.len())..]).into_owned()
    }
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn eat_str(&mut self, t: &str) -> bool {
        if self.s[self.i..].starts_with(t.as_bytes()) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    /// Reads a key or value token: anything up to whitespace or a delimiter.
    fn token(&mut self) -> String {
        let start = self.i;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            if c.is_ascii_whitespace()
                || matches!(c, b',' | b'=' | b'!' | b'(' | b')' | b'<' | b'>')
            {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_ws();
        if self.eat(b'!') {
            self.skip_ws();
            let key = self.token();
            check_key(&key)?;
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
            });
        }
        let key = self.token();
        if key.is_empty() {
            return Err(SelectorError(format!(
                "unable to parse requirement: found '{}', expected: identifier",
                self.rest()
            )));
        }
        check_key(&key)?;
        self.skip_ws();
        if self.at_end() || self.s[self.i] == b',' {
            return Ok(Requirement {
                key,
                op: Op::Exists,
            });
        }
        let op = if self.eat_str("==") || self.eat_str("=") {
            self.skip_ws();
            let v = self.token();
            check_value(&v)?;
            Op::Eq(v)
        } else if self.eat_str("!=") {
            self.skip_ws();
            let v = self.token();
            check_value(&v)?;
            Op::NotEq(v)
        } else if self.eat(b'>') || self.eat(b'<') {
            let gt = self.s[self.i - 1] == b'>';
            self.skip_ws();
            let v = self.token();
            let n: i64 = v.parse().map_err(|_| {
                SelectorError(format!(
                    "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                ))
            })?;
            if gt {
                Op::Gt(n)
            } else {
                Op::Lt(n)
            }
        } else {
            let word = self.token();
            let notin = match word.as_str() {
                "in" => false,
                "notin" => true,
                _ => {
                    return Err(SelectorError(format!(
                        "unable to parse requirement: found '{word}', expected: in, notin, =, ==, !=, gt, lt"
                    )))
                }
            };
            self.skip_ws();
            if !self.eat(b'(') {
                return Err(SelectorError(format!(
                    "found '{}', expected: '('",
                    self.rest()
                )));
            }
            let mut vals = Vec::new();
            loop {
                self.skip_ws();
                if self.eat(b')') {
                    break;
                }
                let v = self.token();
                check_value(&v)?;
                vals.push(v);
                self.skip_ws();
                if self.eat(b',') {
                    continue;
                }
                if self.eat(b')') {
                    break;
                }
                return Err(SelectorError(format!(
                    "found '{}', expected: ',' or ')'",
                    self.rest()
                )));
            }
            if vals.is_empty() {
                return Err(SelectorError(
                    "for 'in', 'notin' operators, values set can't be empty".into(),
                ));
            }
            if notin {
                Op::NotIn(vals)
            } else {
                Op::In(vals)
            }
        };
        Ok(Requirement { key, op })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = Selector::parse("a=1,b==2,c!=3,d in (x, y),e notin (z),f,!g,h>5,i<7")
            .unwrap_or_default();
        assert_eq!(s.requirements.len(), 9);
        let l = labels(&[
            ("a", "1"),
            ("b", "2"),
            ("c", "4"),
            ("d", "y"),
            ("e", "q"),
            ("f", ""),
            ("h", "6"),
            ("i", "3"),
        ]);
        assert!(s.matches(&l));
        let mut l2 = l.clone();
        l2.insert("g".into(), "x".into());
        assert!(!s.matches(&l2));
    }

    #[test]
    fn negative_operators_match_absent_keys() {
        let s = Selector::parse("c!=3,e notin (z)").unwrap_or_default();
        assert!(s.matches(&labels(&[])));
        assert!(!s.matches(&labels(&[("c", "3")])));
        assert!(!s.matches(&labels(&[("e", "z")])));
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(Selector::parse("")
            .unwrap_or_default()
            .matches(&labels(&[("a", "b")])));
        assert!(Selector::parse("  ").is_ok_and(|s| s.is_empty()));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Selector::parse("a in ()").is_err());
        assert!(Selector::parse("a in (b").is_err());
        assert!(Selector::parse("a=b c=d").is_err());
        assert!(Selector::parse("-bad=x").is_err());
        assert!(Selector::parse("a=-bad-").is_err());
        assert!(Selector::parse("a>x").is_err());
    }

    #[test]
    fn structured_selector() {
        let ls = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "x".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        let s = Selector::from_label_selector(&ls).unwrap_or_default();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "b")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "b"), ("x", "1")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "In".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(Selector::from_label_selector(&bad).is_err());
        let bad_op = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Is".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(Selector::from_label_selector(&bad_op).is_err());
    }

    #[test]
    fn display_round_trips() {
        let s = Selector::parse("a=1,b in (x,y),!c").unwrap_or_default();
        assert_eq!(Selector::parse(&s.to_string()).unwrap_or_default(), s);
    }
}
