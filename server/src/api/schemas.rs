//! Hand-written OpenAPI schemas for the request fields serde reads loosely (untagged enums, a
//! map keyed by token ids), so `/openapi.json` states what the server really accepts: no empty
//! prompt or stop string, at most 16 stop strings, biases within [-100, 100]. A derive could
//! only say "a string or some array".

use utoipa::openapi::schema::{
    ArrayBuilder, ArrayItems, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat,
    SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// A token id: an index into the model's vocabulary. Once the model is loaded,
/// `/openapi.json` narrows `maximum` to the vocabulary's last id.
#[allow(dead_code)] // documents the `u32` token-id fields
pub struct TokenId(u32);

impl PartialSchema for TokenId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(u32::MAX))
            .into()
    }
}

impl ToSchema for TokenId {}

/// Stop strings are at most 256 bytes; 64 characters of up to 4 bytes each always fit.
const STOP_STRING_CHARS: usize = 64;

fn token_id() -> RefOr<Schema> {
    Ref::from_schema_name("TokenId").into()
}

fn non_empty_string(max_chars: Option<usize>) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(max_chars)
        .into()
}

fn array_of(item: impl Into<RefOr<Schema>>, min: usize, max: Option<usize>) -> Schema {
    ArrayBuilder::new()
        .items(ArrayItems::RefOrSchema(Box::new(item.into())))
        .min_items(Some(min))
        .max_items(max)
        .into()
}

/// `prompt`: one text, one token-id list, or a batch of either; nothing empty.
pub fn prompt() -> Schema {
    OneOfBuilder::new()
        .item(non_empty_string(None))
        .item(array_of(token_id(), 1, None))
        .item(array_of(non_empty_string(None), 1, None))
        .item(array_of(array_of(token_id(), 1, None), 1, None))
        .description(Some(
            "A text, a list of token ids, or a batch (a list of texts or of token-id lists); \
             each prompt is its own set of choices. Text is at most --max-prompt-bytes in all.",
        ))
        .into()
}

/// `stop`: null, one string, or up to 16 strings; none empty, each at most 256 bytes.
pub fn stop() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(non_empty_string(Some(STOP_STRING_CHARS)))
        .item(array_of(
            non_empty_string(Some(STOP_STRING_CHARS)),
            0,
            Some(crate::limits::MAX_STOP_STRINGS),
        ))
        .description(Some(
            "Stop strings (at most 16, each at most 256 bytes); the text ends before the first \
             match.",
        ))
        .into()
}

/// `logit_bias`: token id (decimal string) -> additive bias in [-100, 100].
pub fn logit_bias() -> Schema {
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9]{1,9}$"));
    let bias = ObjectBuilder::new()
        .schema_type(Type::Number)
        .minimum(Some(-100))
        .maximum(Some(100));
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(key))
        .additional_properties(Some(bias))
        .description(Some(
            "Token id (a decimal string, an id of the vocabulary) to an additive bias in \
             [-100, 100].",
        ))
        .into()
}
