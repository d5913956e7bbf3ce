//! Structural schemas of custom resources: defaulting, pruning of unknown fields, and
//! validation of the OpenAPI v3 subset CRDs use (types, nullable, required, enum, bounds,
//! lengths, patterns, item counts). CEL rules (`x-kubernetes-validations`) are not run.

use serde_json::Value;

/// Fills `default`s, as the API server does for custom resources.
pub fn apply_defaults(obj: &mut Value, schema: &Value) {
    match obj {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, sub) in props {
                    if !map.contains_key(k)
                        && let Some(d) = sub.get("default")
                    {
                        map.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(k) {
                        apply_defaults(child, sub);
                    }
                }
            }
            if let Some(extra) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for child in map.values_mut() {
                    apply_defaults(child, extra);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                apply_defaults(item, &schema["items"]);
            }
        }
        _ => {}
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
}

/// Drops fields the schema does not declare, unless it preserves unknown fields.
pub fn prune(obj: &mut Value, schema: &Value) {
    match obj {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let extra = schema.get("additionalProperties");
            let keep_all = preserves_unknown(schema)
                || extra.is_some_and(|e| e.is_object() || *e == Value::Bool(true))
                || schema["x-kubernetes-embedded-resource"] == Value::Bool(true)
                || (props.is_none() && schema["type"] != "object");
            if !keep_all {
                map.retain(|k, _| props.is_some_and(|p| p.contains_key(k)));
            }
            for (k, child) in map.iter_mut() {
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    prune(child, sub);
                } else if let Some(e) = extra.filter(|e| e.is_object()) {
                    prune(child, e);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                prune(item, &schema["items"]);
            }
        }
        _ => {}
    }
}

/// One failed check: the field path (`spec.plan`) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks a value against its schema; appends what fails.
pub fn validate(v: &Value, schema: &Value, path: &str, out: &mut Vec<Violation>) {
    let mut fail = |reason: &'static str, message: String| {
        out.push(Violation {
            field: path.to_string(),
            reason,
            message,
        });
    };
    if v.is_null() {
        if schema["nullable"] != Value::Bool(true) && schema.get("type").is_some() {
            fail(
                "FieldValueInvalid",
                "Invalid value: \"null\": must not be null".into(),
            );
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == Value::Bool(true);
    if let Some(want) = schema["type"].as_str() {
        let got = type_name(v);
        let ok = got == want
            || (want == "number" && got == "integer")
            || (int_or_string && (got == "integer" || got == "string"));
        if !ok {
            fail(
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{got}\": {path} in body must be of type {want}: \"{got}\""
                ),
            );
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        fail(
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        );
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema["minimum"].as_f64() {
                let exclusive = schema["exclusiveMinimum"] == Value::Bool(true);
                if x < min || (exclusive && x == min) {
                    fail(
                        "FieldValueInvalid",
                        format!(
                            "Invalid value: {v}: {path} in body should be greater than or equal to {min}"
                        ),
                    );
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                let exclusive = schema["exclusiveMaximum"] == Value::Bool(true);
                if x > max || (exclusive && x == max) {
                    fail(
                        "FieldValueInvalid",
                        format!(
                            "Invalid value: {v}: {path} in body should be less than or equal to {max}"
                        ),
                    );
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                fail(
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {v}: {path} in body should be at least {min} chars long"
                    ),
                );
            }
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                fail(
                    "FieldValueTooLong",
                    format!("Too long: may not be more than {max} bytes"),
                );
            }
            if let Some(pattern) = schema["pattern"].as_str() {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(s) => fail(
                        "FieldValueInvalid",
                        format!("Invalid value: {v}: {path} in body should match '{pattern}'"),
                    ),
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema["maxItems"].as_u64()
                && n > max
            {
                fail(
                    "FieldValueTooMany",
                    format!("Too many: {n}: must have at most {max} items"),
                );
            }
            if let Some(min) = schema["minItems"].as_u64()
                && n < min
            {
                fail(
                    "FieldValueInvalid",
                    format!("Invalid value: {n}: {path} in body should have at least {min} items"),
                );
            }
            for (i, item) in items.iter().enumerate() {
                validate(item, &schema["items"], &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for req in schema["required"].as_array().into_iter().flatten() {
                if let Some(k) = req.as_str()
                    && !map.contains_key(k)
                {
                    out.push(Violation {
                        field: child(path, k),
                        reason: "FieldValueRequired",
                        message: "Required value".into(),
                    });
                }
            }
            let props = schema["properties"].as_object();
            for (k, cv) in map {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    validate(cv, sub, &child(path, k), out);
                } else if let Some(extra) =
                    schema.get("additionalProperties").filter(|e| e.is_object())
                {
                    validate(cv, extra, &child(path, k), out);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Defaults, prunes and validates a custom resource against its version's schema.
pub fn admit(obj: &mut Value, schema: &Value) -> Vec<Violation> {
    apply_defaults(obj, schema);
    let metadata = obj.get("metadata").cloned();
    let api_version = obj.get("apiVersion").cloned();
    let kind = obj.get("kind").cloned();
    prune(obj, schema);
    if let Some(m) = obj.as_object_mut() {
        for (k, v) in [
            ("metadata", metadata),
            ("apiVersion", api_version),
            ("kind", kind),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
    }
    let mut out = Vec::new();
    validate(obj, schema, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["plan"], "properties": {
                "plan": {"type": "string", "enum": ["free", "pro"]},
                "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$", "nullable": true},
                "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "port": {"x-kubernetes-int-or-string": true}}},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}})
    }

    #[test]
    fn defaults_prune_and_validate() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"plan": "free", "unknown": 1, "labels": {"a": "b"}, "free": {"any": {"x": 1}},
                     "port": "http", "name": null},
            "status": {"phase": "Ready", "junk": true}, "extra": 1});
        assert_eq!(admit(&mut obj, &schema()), vec![]);
        assert_eq!(obj["spec"]["size"], 3);
        assert!(obj["spec"].get("unknown").is_none());
        assert!(obj.get("extra").is_none());
        assert!(obj["status"].get("junk").is_none());
        assert_eq!(obj["spec"]["free"]["any"]["x"], 1);
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn violations() {
        let mut obj = json!({"spec": {"plan": "gold", "name": "TOOLONG", "size": 11,
            "tags": ["a", "b", "c"], "labels": {"a": 1}}});
        let v = admit(&mut obj, &schema());
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.labels.a",
                "spec.name",
                "spec.name",
                "spec.plan",
                "spec.size",
                "spec.tags"
            ]
        );
        let mut obj = json!({"spec": {"size": "big"}});
        let v = admit(&mut obj, &schema());
        assert_eq!(v[0].field, "spec.plan");
        assert_eq!(v[0].reason, "FieldValueRequired");
        assert_eq!(v[1].reason, "FieldValueTypeInvalid");
    }
}
