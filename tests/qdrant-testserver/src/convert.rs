//! Between Qdrant's gRPC messages and qdrant-edge's types.
//!
//! Filters go through Qdrant's REST JSON form, which the engine's `Filter` deserialises
//! natively: one faithful mapping rather than a second hand-written one. Conditions the
//! platform never sends are refused with `Unimplemented`, never silently dropped.

use qdrant_client::qdrant as grpc;
use qdrant_client::qdrant::condition::ConditionOneOf;
use qdrant_client::qdrant::r#match::MatchValue;
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{Filter, PointId};
use serde_json::{Map, Value as Json, json};
use tonic::Status;

pub fn point_id(id: Option<&grpc::PointId>) -> Result<PointId, Status> {
    use grpc::point_id::PointIdOptions;
    match id.and_then(|id| id.point_id_options.as_ref()) {
        Some(PointIdOptions::Num(n)) => Ok(PointId::NumId(*n)),
        Some(PointIdOptions::Uuid(text)) => Uuid::parse_str(text)
            .map(PointId::Uuid)
            .map_err(|e| Status::invalid_argument(format!("Unable to parse UUID: {text}: {e}"))),
        None => Err(Status::invalid_argument(
            "Validation error: point id is missing",
        )),
    }
}

pub fn grpc_point_id(id: PointId) -> grpc::PointId {
    use grpc::point_id::PointIdOptions;
    grpc::PointId {
        point_id_options: Some(match id {
            PointId::NumId(n) => PointIdOptions::Num(n),
            PointId::Uuid(uuid) => PointIdOptions::Uuid(uuid.to_string()),
        }),
    }
}

fn id_json(id: &grpc::PointId) -> Result<Json, Status> {
    Ok(match point_id(Some(id))? {
        PointId::NumId(n) => json!(n),
        PointId::Uuid(uuid) => json!(uuid.to_string()),
    })
}

pub fn value_to_json(value: &grpc::Value) -> Json {
    use grpc::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::DoubleValue(d)) => json!(d),
        Some(Kind::IntegerValue(i)) => json!(i),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => Json::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

pub fn json_to_value(json: &Json) -> grpc::Value {
    use grpc::value::Kind;
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(grpc::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(grpc::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    grpc::Value { kind: Some(kind) }
}

pub fn payload_to_json(payload: &std::collections::HashMap<String, grpc::Value>) -> Json {
    Json::Object(
        payload
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

pub fn filter(filter: Option<&grpc::Filter>) -> Result<Option<Filter>, Status> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let json = filter_json(filter)?;
    serde_json::from_value(json)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("Wrong input: invalid filter: {e}")))
}

fn filter_json(filter: &grpc::Filter) -> Result<Json, Status> {
    let conditions = |list: &[grpc::Condition]| -> Result<Json, Status> {
        Ok(Json::Array(
            list.iter().map(condition_json).collect::<Result<_, _>>()?,
        ))
    };
    let mut out = Map::new();
    if !filter.must.is_empty() {
        out.insert("must".into(), conditions(&filter.must)?);
    }
    if !filter.should.is_empty() {
        out.insert("should".into(), conditions(&filter.should)?);
    }
    if !filter.must_not.is_empty() {
        out.insert("must_not".into(), conditions(&filter.must_not)?);
    }
    if let Some(min_should) = &filter.min_should {
        out.insert(
            "min_should".into(),
            json!({
                "conditions": conditions(&min_should.conditions)?,
                "min_count": min_should.min_count,
            }),
        );
    }
    Ok(Json::Object(out))
}

fn condition_json(condition: &grpc::Condition) -> Result<Json, Status> {
    match &condition.condition_one_of {
        Some(ConditionOneOf::Field(field)) => field_json(field),
        Some(ConditionOneOf::IsEmpty(c)) => Ok(json!({"is_empty": {"key": c.key}})),
        Some(ConditionOneOf::IsNull(c)) => Ok(json!({"is_null": {"key": c.key}})),
        Some(ConditionOneOf::HasId(c)) => Ok(json!({
            "has_id": c.has_id.iter().map(id_json).collect::<Result<Vec<_>, _>>()?
        })),
        Some(ConditionOneOf::Filter(f)) => filter_json(f),
        Some(ConditionOneOf::HasVector(c)) => Ok(json!({"has_vector": c.has_vector})),
        Some(ConditionOneOf::Nested(c)) => Ok(json!({"nested": {
            "key": c.key,
            "filter": filter_json(c.filter.as_ref().ok_or_else(|| Status::invalid_argument("nested condition without a filter"))?)?,
        }})),
        Some(ConditionOneOf::Slice(_)) => Err(Status::unimplemented(
            "qdrant-testserver: slice conditions are not implemented",
        )),
        None => Err(Status::invalid_argument("Malformed condition: empty")),
    }
}

fn field_json(field: &grpc::FieldCondition) -> Result<Json, Status> {
    let mut out = Map::new();
    out.insert("key".into(), json!(field.key));
    if let Some(m) = field.r#match.as_ref().and_then(|m| m.match_value.as_ref()) {
        let matched = match m {
            MatchValue::Keyword(s) => json!({"value": s}),
            MatchValue::Integer(i) => json!({"value": i}),
            MatchValue::Boolean(b) => json!({"value": b}),
            MatchValue::Text(s) => json!({"text": s}),
            MatchValue::Phrase(s) => json!({"phrase": s}),
            MatchValue::TextAny(s) => json!({"text_any": s}),
            MatchValue::Prefix(s) => json!({"prefix": s}),
            MatchValue::Substring(s) => json!({"substring": s}),
            MatchValue::Keywords(list) => json!({"any": list.strings}),
            MatchValue::Integers(list) => json!({"any": list.integers}),
            MatchValue::ExceptKeywords(list) => json!({"except": list.strings}),
            MatchValue::ExceptIntegers(list) => json!({"except": list.integers}),
        };
        out.insert("match".into(), matched);
    }
    if let Some(range) = &field.range {
        out.insert(
            "range".into(),
            json!({"lt": range.lt, "gt": range.gt, "gte": range.gte, "lte": range.lte}),
        );
    }
    if let Some(is_empty) = field.is_empty {
        out.insert("is_empty".into(), json!(is_empty));
    }
    if let Some(is_null) = field.is_null {
        out.insert("is_null".into(), json!(is_null));
    }
    if field.geo_bounding_box.is_some()
        || field.geo_radius.is_some()
        || field.geo_polygon.is_some()
        || field.values_count.is_some()
        || field.datetime_range.is_some()
    {
        return Err(Status::unimplemented(format!(
            "qdrant-testserver: the condition on {:?} uses geo, values_count or datetime ranges, which are not implemented",
            field.key
        )));
    }
    if out.len() == 1 {
        return Err(Status::invalid_argument(format!(
            "Malformed condition: the field condition on {:?} has no match or range",
            field.key
        )));
    }
    Ok(Json::Object(out))
}

/// The dense vector of a point to upsert.
pub fn point_vector(vectors: Option<&grpc::Vectors>) -> Result<Vec<f32>, Status> {
    use grpc::vectors::VectorsOptions;
    match vectors.and_then(|v| v.vectors_options.as_ref()) {
        Some(VectorsOptions::Vector(vector)) => dense(vector),
        Some(VectorsOptions::Vectors(_)) => Err(Status::unimplemented(
            "qdrant-testserver: named vectors are not implemented; collections have one unnamed vector",
        )),
        None => Err(Status::invalid_argument(
            "Validation error: the point has no vector",
        )),
    }
}

#[allow(deprecated)] // `data` is the older form clients may still send
fn dense(vector: &grpc::Vector) -> Result<Vec<f32>, Status> {
    use grpc::vector::Vector;
    match &vector.vector {
        Some(Vector::Dense(d)) => Ok(d.data.clone()),
        None if vector.indices.is_none() && vector.vectors_count.is_none() => {
            Ok(vector.data.clone())
        }
        Some(_) | None => Err(Status::unimplemented(
            "qdrant-testserver: only dense vectors are implemented",
        )),
    }
}

pub fn distance(grpc_distance: i32) -> Result<qdrant_edge::Distance, Status> {
    use qdrant_edge::Distance;
    match grpc::Distance::try_from(grpc_distance) {
        Ok(grpc::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(grpc::Distance::Euclid) => Ok(Distance::Euclid),
        Ok(grpc::Distance::Dot) => Ok(Distance::Dot),
        Ok(grpc::Distance::Manhattan) => Ok(Distance::Manhattan),
        Ok(grpc::Distance::UnknownDistance) | Err(_) => Err(Status::invalid_argument(format!(
            "Wrong input: unknown distance {grpc_distance}"
        ))),
    }
}

pub fn grpc_distance(distance: qdrant_edge::Distance) -> grpc::Distance {
    use qdrant_edge::Distance;
    match distance {
        Distance::Cosine => grpc::Distance::Cosine,
        Distance::Euclid => grpc::Distance::Euclid,
        Distance::Dot => grpc::Distance::Dot,
        Distance::Manhattan => grpc::Distance::Manhattan,
    }
}

pub fn schema_type(field_type: i32) -> Result<qdrant_edge::PayloadSchemaType, Status> {
    use qdrant_edge::PayloadSchemaType as T;
    Ok(match grpc::FieldType::try_from(field_type) {
        Ok(grpc::FieldType::Keyword) => T::Keyword,
        Ok(grpc::FieldType::Integer) => T::Integer,
        Ok(grpc::FieldType::Float) => T::Float,
        Ok(grpc::FieldType::Geo) => T::Geo,
        Ok(grpc::FieldType::Text) => T::Text,
        Ok(grpc::FieldType::Bool) => T::Bool,
        Ok(grpc::FieldType::Datetime) => T::Datetime,
        Ok(grpc::FieldType::Uuid) => T::Uuid,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "Wrong input: unknown field type {field_type}"
            )));
        }
    })
}

pub fn grpc_schema_type(schema: qdrant_edge::PayloadSchemaType) -> grpc::PayloadSchemaType {
    use grpc::PayloadSchemaType as G;
    use qdrant_edge::PayloadSchemaType as T;
    match schema {
        T::Keyword => G::Keyword,
        T::Integer => G::Integer,
        T::Float => G::Float,
        T::Geo => G::Geo,
        T::Text => G::Text,
        T::Bool => G::Bool,
        T::Datetime => G::Datetime,
        T::Uuid => G::Uuid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_client::qdrant::{Condition, Filter as GrpcFilter};

    #[test]
    fn filters_reach_the_engine_whole() {
        let grpc = GrpcFilter::must([
            Condition::matches("tenant_id", "t1".to_string()),
            Condition::matches("document_id", vec!["a".to_string(), "b".to_string()]),
        ]);
        let edge = filter(Some(&grpc)).unwrap().unwrap();
        let must = edge.must.expect("must conditions");
        assert_eq!(must.len(), 2, "{must:?}");
    }

    #[test]
    fn conditions_not_implemented_are_refused() {
        let grpc = GrpcFilter::must([Condition::values_count(
            "x",
            qdrant_client::qdrant::ValuesCount::default(),
        )]);
        let error = filter(Some(&grpc)).unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unimplemented);
    }
}
