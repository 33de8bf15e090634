//! Port's search query language, as far as integrations use it: `{combinator, rules}` with
//! property rules on `$identifier`, `$title`, `$blueprint`, `$team`, `$datasource` or a property.

use serde_json::Value;

use crate::store::StoredEntity;

/// Whether `entity` satisfies `query`. An unknown operator or a malformed rule is an error,
/// as Port answers such a query with 400.
pub fn matches(query: &Value, entity: &StoredEntity) -> Result<bool, String> {
    let combinator = query
        .get("combinator")
        .and_then(Value::as_str)
        .ok_or("a query needs a `combinator` (\"and\" or \"or\")")?;
    let rules = query
        .get("rules")
        .and_then(Value::as_array)
        .ok_or("a query needs a `rules` array")?;
    let mut results = rules.iter().map(|rule| {
        if rule.get("combinator").is_some() {
            matches(rule, entity)
        } else {
            rule_matches(rule, entity)
        }
    });
    match combinator {
        "and" => results.try_fold(true, |acc, r| r.map(|r| acc && r)),
        "or" => results.try_fold(false, |acc, r| r.map(|r| acc || r)),
        other => Err(format!("unknown combinator {other:?}")),
    }
}

fn rule_matches(rule: &Value, entity: &StoredEntity) -> Result<bool, String> {
    let property = rule
        .get("property")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a rule needs a `property`: {rule}"))?;
    let operator = rule
        .get("operator")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a rule needs an `operator`: {rule}"))?;
    let expected = rule.get("value").unwrap_or(&Value::Null);
    let actual = entity.field(property);
    let as_text = |v: &Value| v.as_str().map(str::to_owned);
    Ok(match operator {
        "=" => actual == *expected,
        "!=" => actual != *expected,
        ">" | ">=" | "<" | "<=" => compare(&actual, expected, operator),
        "in" => expected
            .as_array()
            .is_some_and(|options| options.contains(&actual)),
        "notIn" => !expected
            .as_array()
            .is_some_and(|options| options.contains(&actual)),
        "contains" => match (&actual, expected) {
            (Value::String(a), Value::String(e)) => a.contains(e.as_str()),
            (Value::Array(items), e) => items.contains(e),
            _ => false,
        },
        "doesNotContains" => match (&actual, expected) {
            (Value::String(a), Value::String(e)) => !a.contains(e.as_str()),
            (Value::Array(items), e) => !items.contains(e),
            _ => true,
        },
        "containsAny" => match (&actual, expected.as_array()) {
            (Value::Array(items), Some(options)) => options.iter().any(|o| items.contains(o)),
            (Value::String(a), Some(options)) => {
                options.iter().filter_map(as_text).any(|o| a.contains(&o))
            }
            _ => false,
        },
        "beginsWith" => text_pair(&actual, expected).is_some_and(|(a, e)| a.starts_with(e)),
        "endsWith" => text_pair(&actual, expected).is_some_and(|(a, e)| a.ends_with(e)),
        "doesNotBeginsWith" => !text_pair(&actual, expected).is_some_and(|(a, e)| a.starts_with(e)),
        "doesNotEndsWith" => !text_pair(&actual, expected).is_some_and(|(a, e)| a.ends_with(e)),
        "isEmpty" => is_empty(&actual),
        "isNotEmpty" => !is_empty(&actual),
        other => return Err(format!("operator {other:?} is not supported")),
    })
}

fn text_pair<'a>(actual: &'a Value, expected: &'a Value) -> Option<(&'a str, &'a str)> {
    Some((actual.as_str()?, expected.as_str()?))
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn compare(actual: &Value, expected: &Value, operator: &str) -> bool {
    let ordering = match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => a.as_f64().partial_cmp(&e.as_f64()),
        (Value::String(a), Value::String(e)) => Some(a.cmp(e)),
        _ => None,
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match operator {
        ">" => ordering.is_gt(),
        ">=" => ordering.is_ge(),
        "<" => ordering.is_lt(),
        _ => ordering.is_le(),
    }
}
