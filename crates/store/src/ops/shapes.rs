//! DynamoDB's request shapes, checked as its front end checks them before an operation runs.
//!
//! DynamoDB reads a request in two steps before the operation itself sees it:
//! 1. **Types.** Each member is read as its type in the API model (a string, an integer, a
//!    list, a structure). A JSON value of another type is a `SerializationException` in the
//!    words of DynamoDB's Java deserializer — `TRUE_VALUE cannot be converted to String`,
//!    `Unexpected field type`, `Start of structure or map found where not expected` — and
//!    nothing else is judged. Some are read leniently: a Boolean from the strings `true`, `1`,
//!    `yes` (and `false`, `0`, `no`, any case), an integer from a number with a fraction
//!    (truncated); those are rewritten to their proper type before the request is decoded.
//! 2. **Constraints.** Every member's constraints (not null, length, range, pattern, enum) are
//!    checked, and *every* violation is named in one `ValidationException`, up to
//!    [`CONSTRAINT_ERRORS_MAX`]: `2 validation errors detected: Value null at 'tableName' failed
//!    to satisfy constraint: Member must not be null; Value 'hi' at 'returnValues' ...`.
//!
//! Only then does the operation run its own checks (expressions, keys, the table). Members are
//! named as DynamoDB names them: camel case, a list element as its 1-based index then `member`,
//! a map entry as its key then `member` (`keySchema.1.member.keyType`,
//! `requestItems.orders.member.keys`). A JSON `null` is an absent member.
//!
//! The shapes here are the operations DynamoDB's recorded answers cover (dynalite's suite,
//! recorded against DynamoDB) with the constraints of DynamoDB's API reference. An operation
//! without a shape here is decoded and checked by its own code only.

use std::borrow::Cow;

use dynamo_protocol::ApiError;
use serde_json::{Map, Value};

use super::lower_first;

/// DynamoDB names at most this many violated constraints in one answer.
pub const CONSTRAINT_ERRORS_MAX: usize = 10;

/// Elements of one list, or entries of one map, the fast path reads; past it they are only
/// counted. Every list DynamoDB bounds is bounded well below it (100 keys, 25 writes, 255
/// names), so a longer one already breaks a constraint; what it bounds is the memory a hostile
/// body of millions of small elements takes (a [`Value`] map costs some 600 bytes).
pub const ENTRIES_READ_MAX: usize = 1024;

/// Largest body whose refusal is judged whole (`judge`: the first wrong type before the
/// constraints, and DynamoDB's order after a refusal, `earlier_refusal`), which parses it into
/// a [`Value`] of up to ~100 times its size. A larger body (only a BatchWriteItem near its
/// 16 MiB limit is one) is answered with the constraints the fast path found, or the
/// operation's own refusal.
pub const JUDGED_BODY_BYTES_MAX: usize = 1024 * 1024;

/// The Java package of DynamoDB's model classes, as its deserializer names them.
const MODEL_PACKAGE: &str = "com.amazonaws.dynamodb.v20120810";

/// What DynamoDB's deserializer answers when a member that is a list of maps or a map of lists
/// (a container inside a container) is given a scalar: a Java reflection error, word for word.
const NESTED_CONTAINER_GIVEN_SCALAR: &str = "class sun.reflect.generics.reflectiveObjects.ParameterizedTypeImpl cannot be cast to class java.lang.Class (sun.reflect.generics.reflectiveObjects.ParameterizedTypeImpl and java.lang.Class are in module java.base of loader 'bootstrap')";

/// The largest number with a fraction read as an integer (beyond it an f64 has no fraction, and
/// the decoder judges the number's range).
const INTEGER_READ_MAX: f64 = 9.0e15;

const OBJECT_NOT_EXPECTED: &str = "Start of structure or map found where not expected";

pub enum Shape {
    Str(StrRules),
    /// `java` is the Java class the member is read as: `Integer` or `Long`.
    Int {
        java: &'static str,
        min: Option<i64>,
        max: Option<i64>,
    },
    Bool,
    Blob,
    List {
        member: &'static Shape,
        min: Option<usize>,
        max: Option<usize>,
        /// A list that is itself an element of a list or a value of a map.
        nested: bool,
    },
    Map {
        value: &'static Shape,
        /// The Java type of the values, as the deserializer names it.
        java_value: &'static str,
        min: Option<usize>,
        /// Constraints on every key (BatchGetItem's table names).
        keys: Option<&'static StrRules>,
        /// Each value's length must lie in this range (BatchWriteItem's requests per table).
        value_len: Option<(usize, usize)>,
        nested: bool,
    },
    Struct {
        /// The model class's simple name (`ProvisionedThroughput`).
        java: &'static str,
        members: &'static [Member],
    },
    /// DynamoDB's AttributeValue: a structure of one member per data type.
    AttributeValue,
}

pub struct StrRules {
    pub min: Option<usize>,
    pub max: Option<usize>,
    /// DynamoDB's pattern for table and index names, `[a-zA-Z0-9_.-]+`.
    pub name_pattern: bool,
    pub one_of: &'static [&'static str],
    /// The table operations' TableName: its presence and its length are judged before any
    /// constraint, in their own words ([`table_name_prelude`]).
    pub prelude: bool,
}

pub struct Member {
    pub name: &'static str,
    pub shape: &'static Shape,
    pub not_null: bool,
}

const fn member(name: &'static str, shape: &'static Shape) -> Member {
    Member {
        name,
        shape,
        not_null: false,
    }
}

const fn required(name: &'static str, shape: &'static Shape) -> Member {
    Member {
        name,
        shape,
        not_null: true,
    }
}

const fn one_of(values: &'static [&'static str]) -> Shape {
    Shape::Str(StrRules {
        min: None,
        max: None,
        name_pattern: false,
        one_of: values,
        prelude: false,
    })
}

const fn list(member: &'static Shape) -> Shape {
    Shape::List {
        member,
        min: None,
        max: None,
        nested: false,
    }
}

const fn map_of(value: &'static Shape, java_value: &'static str) -> Shape {
    Shape::Map {
        value,
        java_value,
        min: None,
        keys: None,
        value_len: None,
        nested: false,
    }
}

const STRING: Shape = Shape::Str(StrRules {
    min: None,
    max: None,
    name_pattern: false,
    one_of: &[],
    prelude: false,
});
const BOOLEAN: Shape = Shape::Bool;
const NAME_RULES: StrRules = StrRules {
    min: Some(3),
    max: Some(255),
    name_pattern: true,
    one_of: &[],
    prelude: false,
};
const TABLE_NAME: Shape = Shape::Str(NAME_RULES);
/// The table-level operations (CreateTable, DescribeTable, ...) check a table name's presence
/// and length first, in their own words, and its pattern as a constraint.
const TABLE_NAME_PATTERN: Shape = Shape::Str(StrRules {
    min: None,
    max: None,
    name_pattern: true,
    one_of: &[],
    prelude: true,
});
const INDEX_NAME: Shape = Shape::Str(NAME_RULES);
const RETURN_CONSUMED_CAPACITY: Shape = one_of(&["INDEXES", "TOTAL", "NONE"]);
const RETURN_ITEM_COLLECTION_METRICS: Shape = one_of(&["SIZE", "NONE"]);
const RETURN_VALUES: Shape = one_of(&["ALL_NEW", "UPDATED_OLD", "ALL_OLD", "NONE", "UPDATED_NEW"]);
const CONDITIONAL_OPERATOR: Shape = one_of(&["OR", "AND"]);
const SELECT: Shape = one_of(&[
    "SPECIFIC_ATTRIBUTES",
    "COUNT",
    "ALL_ATTRIBUTES",
    "ALL_PROJECTED_ATTRIBUTES",
]);
const COMPARISON_OPERATORS: &[&str] = &[
    "IN",
    "NULL",
    "BETWEEN",
    "LT",
    "NOT_CONTAINS",
    "EQ",
    "GT",
    "NOT_NULL",
    "NE",
    "LE",
    "BEGINS_WITH",
    "GE",
    "CONTAINS",
];
const COMPARISON_OPERATOR: Shape = one_of(COMPARISON_OPERATORS);
const ATTRIBUTE_VALUE: Shape = Shape::AttributeValue;
const ATTRIBUTE_MAP: Shape = map_of(&ATTRIBUTE_VALUE, "com.amazonaws.dynamodb.v20120810.AttributeValue");
const ATTRIBUTE_VALUE_LIST: Shape = list(&ATTRIBUTE_VALUE);
const NAME_MAP: Shape = map_of(&STRING, "java.lang.String");
const ATTRIBUTES_TO_GET: Shape = Shape::List {
    member: &STRING,
    min: Some(1),
    max: Some(255),
    nested: false,
};
const LIMIT: Shape = Shape::Int {
    java: "Integer",
    min: Some(1),
    max: None,
};

const EXPECTED: Shape = map_of(
    &Shape::Struct {
        java: "ExpectedAttributeValue",
        members: &[
            member("Value", &ATTRIBUTE_VALUE),
            member("Exists", &BOOLEAN),
            member("ComparisonOperator", &COMPARISON_OPERATOR),
            member("AttributeValueList", &ATTRIBUTE_VALUE_LIST),
        ],
    },
    "com.amazonaws.dynamodb.v20120810.ExpectedAttributeValue",
);
const CONDITIONS: Shape = map_of(
    &Shape::Struct {
        java: "Condition",
        members: &[
            member("AttributeValueList", &ATTRIBUTE_VALUE_LIST),
            required("ComparisonOperator", &COMPARISON_OPERATOR),
        ],
    },
    "com.amazonaws.dynamodb.v20120810.Condition",
);
const ATTRIBUTE_UPDATES: Shape = map_of(
    &Shape::Struct {
        java: "AttributeValueUpdate",
        members: &[member("Value", &ATTRIBUTE_VALUE), member("Action", &STRING)],
    },
    "com.amazonaws.dynamodb.v20120810.AttributeValueUpdate",
);

const THROUGHPUT_UNITS: Shape = Shape::Int {
    java: "Long",
    min: Some(1),
    max: None,
};
const PROVISIONED_THROUGHPUT: Shape = Shape::Struct {
    java: "ProvisionedThroughput",
    members: &[
        required("ReadCapacityUnits", &THROUGHPUT_UNITS),
        required("WriteCapacityUnits", &THROUGHPUT_UNITS),
    ],
};
const BILLING_MODE: Shape = one_of(&["PROVISIONED", "PAY_PER_REQUEST"]);
const KEY_SCHEMA: Shape = Shape::List {
    member: &Shape::Struct {
        java: "KeySchemaElement",
        members: &[
            required("AttributeName", &STRING),
            required("KeyType", &one_of(&["HASH", "RANGE"])),
        ],
    },
    min: Some(1),
    max: Some(2),
    nested: false,
};
/// A global index's KeySchema: multi-attribute keys take up to 4 HASH and 4 RANGE elements,
/// which the catalog checks in DynamoDB's words.
const GLOBAL_KEY_SCHEMA: Shape = Shape::List {
    member: &Shape::Struct {
        java: "KeySchemaElement",
        members: &[
            required("AttributeName", &STRING),
            required("KeyType", &one_of(&["HASH", "RANGE"])),
        ],
    },
    min: Some(1),
    max: None,
    nested: false,
};
const PROJECTION: Shape = Shape::Struct {
    java: "Projection",
    members: &[
        member("ProjectionType", &one_of(&["ALL", "INCLUDE", "KEYS_ONLY"])),
        member(
            "NonKeyAttributes",
            &Shape::List {
                member: &STRING,
                min: Some(1),
                max: None,
                nested: false,
            },
        ),
    ],
};

/// CreateTable's and UpdateTable's StreamSpecification: its Boolean is read leniently, like
/// any other (`"StreamEnabled": "true"`).
const STREAM_SPECIFICATION: Shape = Shape::Struct {
    java: "StreamSpecification",
    members: &[
        required("StreamEnabled", &BOOLEAN),
        member(
            "StreamViewType",
            &one_of(&["NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES", "KEYS_ONLY"]),
        ),
    ],
};

pub const GET_ITEM: Shape = Shape::Struct {
    java: "GetItemInput",
    members: &[
        required("TableName", &TABLE_NAME),
        required("Key", &ATTRIBUTE_MAP),
        member("AttributesToGet", &ATTRIBUTES_TO_GET),
        member("ConsistentRead", &BOOLEAN),
        member("ReturnConsumedCapacity", &RETURN_CONSUMED_CAPACITY),
        member("ProjectionExpression", &STRING),
        member("ExpressionAttributeNames", &NAME_MAP),
    ],
};

pub const PUT_ITEM: Shape = Shape::Struct {
    java: "PutItemInput",
    members: &[
        required("TableName", &TABLE_NAME),
        required("Item", &ATTRIBUTE_MAP),
        member("Expected", &EXPECTED),
        member("ReturnValues", &RETURN_VALUES),
        member("ReturnConsumedCapacity", &RETURN_CONSUMED_CAPACITY),
        member("ReturnItemCollectionMetrics", &RETURN_ITEM_COLLECTION_METRICS),
        member("ConditionalOperator", &CONDITIONAL_OPERATOR),
        member("ConditionExpression", &STRING),
        member("ExpressionAttributeNames", &NAME_MAP),
        member("ExpressionAttributeValues", &ATTRIBUTE_MAP),
    ],
};

pub const DELETE_ITEM: Shape = Shape::Struct {
    java: "DeleteItemInput",
    members: &[
        required("TableName", &TABLE_NAME),
        required("Key", &ATTRIBUTE_MAP),
        member("Expected", &EXPECTED),
        member("ConditionalOperator", &CONDITIONAL_OPERATOR),
        member("ReturnValues", &RETURN_VALUES),
        member("ReturnConsumedCapacity", &RETURN_CONSUMED_CAPACITY),
        member("ReturnItemCollectionMetrics", &RETURN_ITEM_COLLECTION_METRICS),
        member("ConditionExpression", &STRING),
        member("ExpressionAttributeNames", &NAME_MAP),
        member("ExpressionAttributeValues", &ATTRIBUTE_MAP),
    ],
};

pub const UPDATE_ITEM: Shape = Shape::Struct {
    java: "UpdateItemInput",
    members: &[
        required("TableName", &TABLE_NAME),
        required("Key", &ATTRIBUTE_MAP),
        member("AttributeUpdates", &ATTRIBUTE_UPDATES),
        member("Expected", &EXPECTED),
        member("ConditionalOperator", &CONDITIONAL_OPERATOR),
        member("ReturnValues", &RETURN_VALUES),
        member("ReturnConsumedCapacity", &RETURN_CONSUMED_CAPACITY),
        member("ReturnItemCollectionMetrics", &RETURN_ITEM_COLLECTION_METRICS),
        member("UpdateExpression", &STRING),
        member("ConditionExpression", &STRING),
        member("ExpressionAttributeNames", &NAME_MAP),
        member("ExpressionAttributeValues", &ATTRIBUTE_MAP),
    ],
};

pub const QUERY: Shape = Shape::Struct {
    java: "QueryInput",
    members: &[
        required("TableName", &TABLE_NAME),
        member("IndexName", &INDEX_NAME),
        member("Select", &SELECT),
        member("AttributesToGet", &ATTRIBUTES_TO_GET),
        member("Limit", &LIMIT),
        member("ConsistentRead", &BOOLEAN),
        member("KeyConditions", &CONDITIONS),
        member("QueryFilter", &CONDITIONS),
        member("ConditionalOperator", &CONDITIONAL_OPERATOR),
        member("ScanIndexForward", &BOOLEAN),
        member("ExclusiveStartKey", &ATTRIBUTE_MAP),
        member("ReturnConsumedCapacity", &RETURN_CONSUMED_CAPACITY),
        member("ProjectionExpression", &STRING),
        member("FilterExpression", &STRING),
        member("KeyConditionExpression", &STRING),
        member("ExpressionAttributeNames", &NAME_MAP),
        member("ExpressionAttributeValues", &ATTRIBUTE_MAP),
    ],
};

pub const SCAN: Shape = Shape::Struct {
    java: "ScanInput",
    members: &[
        required("TableName", &TABLE_NAME),
        member("IndexName", &INDEX_NAME),
        member("AttributesToGet", &ATTRIBUTES_TO_GET),
        member("Limit", &LIMIT),
        member("Select", &SELECT),
        member("ScanFilter", &CONDITIONS),
        member("ConditionalOperator", &CONDITIONAL_OPERATOR),
        member("ExclusiveStartKey", &ATTRIBUTE_MAP),
        member("ReturnConsumedCapacity", &RETURN_CONSUMED_CAPACITY),
        member(
            "TotalSegments",
            &Shape::Int {
                java: "Integer",
                min: Some(1),
                max: None,
            },
        ),
        member(
            "Segment",
            &Shape::Int {
                java: "Integer",
                min: Some(0),
                max: None,
            },
        ),
        member("ProjectionExpression", &STRING),
        member("FilterExpression", &STRING),
        member("ExpressionAttributeNames", &NAME_MAP),
        member("ExpressionAttributeValues", &ATTRIBUTE_MAP),
        member("ConsistentRead", &BOOLEAN),
    ],
};

pub const BATCH_GET_ITEM: Shape = Shape::Struct {
    java: "BatchGetItemInput",
    members: &[
        required(
            "RequestItems",
            &Shape::Map {
                value: &Shape::Struct {
                    java: "KeysAndAttributes",
                    members: &[
                        required(
                            "Keys",
                            &Shape::List {
                                member: &Shape::Map {
                                    value: &ATTRIBUTE_VALUE,
                                    java_value: "com.amazonaws.dynamodb.v20120810.AttributeValue",
                                    min: None,
                                    keys: None,
                                    value_len: None,
                                    nested: true,
                                },
                                min: Some(1),
                                max: Some(super::BATCH_GET_KEYS_MAX),
                                nested: false,
                            },
                        ),
                        member("AttributesToGet", &ATTRIBUTES_TO_GET),
                        member("ConsistentRead", &BOOLEAN),
                        member("ProjectionExpression", &STRING),
                        member("ExpressionAttributeNames", &NAME_MAP),
                    ],
                },
                java_value: "com.amazonaws.dynamodb.v20120810.KeysAndAttributes",
                min: Some(1),
                keys: Some(&NAME_RULES),
                value_len: None,
                nested: false,
            },
        ),
        member("ReturnConsumedCapacity", &RETURN_CONSUMED_CAPACITY),
    ],
};

pub const BATCH_WRITE_ITEM: Shape = Shape::Struct {
    java: "BatchWriteItemInput",
    members: &[
        required(
            "RequestItems",
            &Shape::Map {
                value: &Shape::List {
                    member: &Shape::Struct {
                        java: "WriteRequest",
                        members: &[
                            member(
                                "PutRequest",
                                &Shape::Struct {
                                    java: "PutRequest",
                                    members: &[required("Item", &ATTRIBUTE_MAP)],
                                },
                            ),
                            member(
                                "DeleteRequest",
                                &Shape::Struct {
                                    java: "DeleteRequest",
                                    members: &[required("Key", &ATTRIBUTE_MAP)],
                                },
                            ),
                        ],
                    },
                    min: None,
                    max: None,
                    nested: true,
                },
                java_value: "java.util.List<com.amazonaws.dynamodb.v20120810.WriteRequest>",
                min: Some(1),
                keys: Some(&NAME_RULES),
                value_len: Some((1, super::BATCH_WRITE_ITEMS_MAX)),
                nested: false,
            },
        ),
        member("ReturnConsumedCapacity", &RETURN_CONSUMED_CAPACITY),
        member("ReturnItemCollectionMetrics", &RETURN_ITEM_COLLECTION_METRICS),
    ],
};

const LOCAL_INDEX_MEMBERS: &[Member] = &[
    required("IndexName", &INDEX_NAME),
    required("KeySchema", &KEY_SCHEMA),
    required("Projection", &PROJECTION),
];
const GLOBAL_INDEX_MEMBERS: &[Member] = &[
    required("IndexName", &INDEX_NAME),
    required("KeySchema", &GLOBAL_KEY_SCHEMA),
    required("Projection", &PROJECTION),
    member("ProvisionedThroughput", &PROVISIONED_THROUGHPUT),
];

pub const CREATE_TABLE: Shape = Shape::Struct {
    java: "CreateTableInput",
    members: &[
        required(
            "AttributeDefinitions",
            &list(&Shape::Struct {
                java: "AttributeDefinition",
                members: &[
                    required("AttributeName", &STRING),
                    required("AttributeType", &one_of(&["B", "N", "S"])),
                ],
            }),
        ),
        required("TableName", &TABLE_NAME_PATTERN),
        required("KeySchema", &KEY_SCHEMA),
        member(
            "LocalSecondaryIndexes",
            &list(&Shape::Struct {
                java: "LocalSecondaryIndex",
                members: LOCAL_INDEX_MEMBERS,
            }),
        ),
        member(
            "GlobalSecondaryIndexes",
            &list(&Shape::Struct {
                java: "GlobalSecondaryIndex",
                members: GLOBAL_INDEX_MEMBERS,
            }),
        ),
        member("BillingMode", &BILLING_MODE),
        member("ProvisionedThroughput", &PROVISIONED_THROUGHPUT),
        member(
            "Tags",
            &list(&Shape::Struct {
                java: "Tag",
                members: &[required("Key", &STRING), required("Value", &STRING)],
            }),
        ),
        member("StreamSpecification", &STREAM_SPECIFICATION),
        member("DeletionProtectionEnabled", &BOOLEAN),
    ],
};

pub const UPDATE_TABLE: Shape = Shape::Struct {
    java: "UpdateTableInput",
    members: &[
        required("TableName", &TABLE_NAME_PATTERN),
        member(
            "AttributeDefinitions",
            &Shape::List {
                member: &Shape::Struct {
                    java: "AttributeDefinition",
                    members: &[
                        required("AttributeName", &STRING),
                        required("AttributeType", &one_of(&["B", "N", "S"])),
                    ],
                },
                min: None,
                max: None,
                nested: false,
            },
        ),
        member("BillingMode", &BILLING_MODE),
        member("ProvisionedThroughput", &PROVISIONED_THROUGHPUT),
        member(
            "GlobalSecondaryIndexUpdates",
            &list(&Shape::Struct {
                java: "GlobalSecondaryIndexUpdate",
                members: &[
                    member(
                        "Update",
                        &Shape::Struct {
                            java: "UpdateGlobalSecondaryIndexAction",
                            members: &[
                                required("IndexName", &INDEX_NAME),
                                member("ProvisionedThroughput", &PROVISIONED_THROUGHPUT),
                            ],
                        },
                    ),
                    member(
                        "Create",
                        &Shape::Struct {
                            java: "CreateGlobalSecondaryIndexAction",
                            members: GLOBAL_INDEX_MEMBERS,
                        },
                    ),
                    member(
                        "Delete",
                        &Shape::Struct {
                            java: "DeleteGlobalSecondaryIndexAction",
                            members: &[required("IndexName", &INDEX_NAME)],
                        },
                    ),
                ],
            }),
        ),
        member("StreamSpecification", &STREAM_SPECIFICATION),
        member("DeletionProtectionEnabled", &BOOLEAN),
    ],
};

const TABLE_ONLY: Shape = Shape::Struct {
    java: "TableInput",
    members: &[required("TableName", &TABLE_NAME_PATTERN)],
};

pub const LIST_TABLES: Shape = Shape::Struct {
    java: "ListTablesInput",
    members: &[
        member("ExclusiveStartTableName", &TABLE_NAME),
        member(
            "Limit",
            &Shape::Int {
                java: "Integer",
                min: Some(1),
                max: Some(super::LIST_TABLES_LIMIT_MAX as i64),
            },
        ),
    ],
};

pub const TAG_RESOURCE: Shape = Shape::Struct {
    java: "TagResourceInput",
    members: &[
        member("ResourceArn", &STRING),
        member(
            "Tags",
            &list(&Shape::Struct {
                java: "Tag",
                members: &[member("Key", &STRING), member("Value", &STRING)],
            }),
        ),
    ],
};

pub const UNTAG_RESOURCE: Shape = Shape::Struct {
    java: "UntagResourceInput",
    members: &[member("ResourceArn", &STRING), member("TagKeys", &list(&STRING))],
};

pub const LIST_TAGS: Shape = Shape::Struct {
    java: "ListTagsOfResourceInput",
    members: &[member("ResourceArn", &STRING), member("NextToken", &STRING)],
};

/// The shape of `operation`'s request, for the operations this module covers.
pub fn input(operation: &str) -> Option<&'static Shape> {
    Some(match operation {
        "GetItem" => &GET_ITEM,
        "PutItem" => &PUT_ITEM,
        "DeleteItem" => &DELETE_ITEM,
        "UpdateItem" => &UPDATE_ITEM,
        "Query" => &QUERY,
        "Scan" => &SCAN,
        "BatchGetItem" => &BATCH_GET_ITEM,
        "BatchWriteItem" => &BATCH_WRITE_ITEM,
        "CreateTable" => &CREATE_TABLE,
        "UpdateTable" => &UPDATE_TABLE,
        "DeleteTable" | "DescribeTable" | "DescribeTimeToLive" => &TABLE_ONLY,
        "ListTables" => &LIST_TABLES,
        "TagResource" => &TAG_RESOURCE,
        "UntagResource" => &UNTAG_RESOURCE,
        "ListTagsOfResource" => &LIST_TAGS,
        _ => return None,
    })
}

/// Checks `body`'s constraints as DynamoDB does before an operation runs (the module's step 2),
/// answering a wrong JSON type first when there is one (step 1). The fast path: the body is
/// read once into only the members a constraint can apply to (items, keys and expression
/// values are skipped over, not built), so a valid request pays a scan of its bytes. A body
/// that is not a JSON object is left to the operation's decoder, as is a wrong type in a
/// request that breaks no constraint: the decoder refuses it, and [`reread`] words it.
pub fn check(shape: &Shape, body: &[u8]) -> Result<(), ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let Ok(pruned) = serde::de::DeserializeSeed::deserialize(Pruned(shape), &mut deserializer) else {
        return Ok(());
    };
    // Text after the JSON value, like a body that is not JSON, is the decoder's to refuse.
    if !pruned.is_object() || deserializer.end().is_err() {
        return Ok(());
    }
    let refusal = match table_name_prelude(&pruned, shape) {
        Some(refusal) => refusal,
        None => {
            let mut errors = Vec::new();
            check_constraints(&pruned, shape, &At::Root, &mut errors);
            if errors.is_empty() {
                return Ok(());
            }
            constraint_error(&errors)
        }
    };
    // A wrong type is answered before any constraint.
    if body.len() <= JUDGED_BODY_BYTES_MAX {
        judge(shape, body)?;
    }
    Err(refusal)
}

/// The table operations' first judgement of TableName, in DynamoDB's words for it: absent, or
/// not 3 to 255 characters long (its pattern is a constraint, judged with the others).
fn table_name_prelude(request: &Value, shape: &Shape) -> Option<ApiError> {
    let Shape::Struct { members, .. } = shape else {
        return None;
    };
    let member = members
        .iter()
        .find(|m| matches!(m.shape, Shape::Str(StrRules { prelude: true, .. })))?;
    match request.get(member.name) {
        None | Some(Value::Null) => Some(ApiError::validation(format!(
            "The parameter '{}' is required but was not present in the request",
            member.name
        ))),
        Some(Value::String(name)) if !(3..=255).contains(&name.chars().count()) => Some(ApiError::validation(format!(
            "{} must be at least 3 characters long and at most 255 characters long",
            member.name
        ))),
        _ => None,
    }
}

/// What to do with a request the operation's decoder refused as a SerializationException.
pub enum Reread {
    /// DynamoDB's own words for the wrong type.
    Refused(ApiError),
    /// DynamoDB reads it leniently: decode this body instead (check it again first).
    Rewritten(Vec<u8>),
    /// Nothing this module can say: keep the decoder's answer.
    Unchanged,
}

/// After the operation's decoder refused `body`: DynamoDB's words for the wrong type, or the
/// body with its leniently read members rewritten.
pub fn reread(shape: &Shape, body: &[u8]) -> Reread {
    if body.len() > JUDGED_BODY_BYTES_MAX {
        return Reread::Unchanged;
    }
    match judge(shape, body) {
        Err(error) => Reread::Refused(error),
        Ok(Cow::Owned(rewritten)) => Reread::Rewritten(rewritten),
        Ok(Cow::Borrowed(_)) => Reread::Unchanged,
    }
}

/// Both steps on the whole request: the first wrong type (SerializationException), then every
/// broken constraint; or the body to decode (rewritten where read leniently).
fn judge<'b>(shape: &Shape, body: &'b [u8]) -> Result<Cow<'b, [u8]>, ApiError> {
    let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
        return Ok(Cow::Borrowed(body));
    };
    if !request.is_object() {
        return Ok(Cow::Borrowed(body));
    }
    let mut rewritten = false;
    read_types(&mut request, shape, Place::Field, &mut rewritten).map_err(ApiError::serialization)?;
    if let Some(refusal) = table_name_prelude(&request, shape) {
        return Err(refusal);
    }
    let mut errors = Vec::new();
    check_constraints(&request, shape, &At::Root, &mut errors);
    if !errors.is_empty() {
        return Err(constraint_error(&errors));
    }
    Ok(if rewritten {
        Cow::Owned(serde_json::to_vec(&request).unwrap_or_else(|_| body.to_vec()))
    } else {
        Cow::Borrowed(body)
    })
}

impl Shape {
    /// Whether any constraint applies within this shape's values. A string is always kept
    /// (a list's message shows its strings).
    fn constrained(&self) -> bool {
        match self {
            Shape::Str(_) => true,
            Shape::Int { min, max, .. } => min.is_some() || max.is_some(),
            Shape::Bool | Shape::Blob | Shape::AttributeValue => false,
            Shape::List { member, min, max, .. } => min.is_some() || max.is_some() || member.constrained(),
            Shape::Map {
                value,
                min,
                keys,
                value_len,
                ..
            } => min.is_some() || keys.is_some() || value_len.is_some() || value.constrained(),
            Shape::Struct { members, .. } => members.iter().any(|m| m.not_null || m.shape.constrained()),
        }
    }
}

/// Stands for a value no constraint looks into (an item, a key).
fn skipped() -> Value {
    // An empty map allocates nothing (a hostile body of millions of small items costs no
    // memory here); no constraint looks into it, so it is never shown.
    Value::Object(Map::new())
}

/// Reads a request into a [`Value`] holding only what its constraints need.
struct Pruned<'s>(&'s Shape);

impl<'de> serde::de::DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.0 {
            Shape::Str(_) | Shape::Int { .. } => serde::Deserialize::deserialize(deserializer),
            shape if !shape.constrained() => deserializer.deserialize_any(Skip),
            shape => deserializer.deserialize_any(PrunedVisitor(shape)),
        }
    }
}

/// Reads past a value, telling only null from present.
struct Skip;

impl<'de> serde::de::Visitor<'de> for Skip {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(skipped())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(skipped())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(skipped())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(skipped())
    }
    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(skipped())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(skipped())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(skipped())
    }
}

struct PrunedVisitor<'s>(&'s Shape);

impl<'de> serde::de::Visitor<'de> for PrunedVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    // A scalar where a container belongs is a wrong type, which `judge` words; kept as is.
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Shape::List { member, .. } = self.0 else {
            // A list where a structure or map belongs: a wrong type, kept as no container.
            Skip.visit_seq(seq)?;
            return Ok(Value::Bool(true));
        };
        let mut elements = Vec::new();
        while elements.len() < ENTRIES_READ_MAX {
            match seq.next_element_seed(Pruned(member))? {
                Some(element) => elements.push(element),
                None => return Ok(Value::Array(elements)),
            }
        }
        // Past the bound, counted (a length constraint judges the whole list) and not read.
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            elements.push(Value::Null);
        }
        Ok(Value::Array(elements))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        match self.0 {
            Shape::Struct { members, .. } => {
                while let Some(key) = map.next_key::<String>()? {
                    match members.iter().find(|m| m.name == key) {
                        Some(member) => {
                            let value = map.next_value_seed(Pruned(member.shape))?;
                            fields.insert(key, value);
                        }
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
            }
            Shape::Map { value, .. } => {
                while let Some(key) = map.next_key::<String>()? {
                    // Past the bound, an entry's key is kept (key constraints judge every one)
                    // and its value not read.
                    let entry = if fields.len() < ENTRIES_READ_MAX {
                        map.next_value_seed(Pruned(value))?
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        Value::Null
                    };
                    fields.insert(key, entry);
                }
            }
            _ => {
                Skip.visit_map(map)?;
                return Ok(Value::Bool(true));
            }
        }
        Ok(Value::Object(fields))
    }
}

/// An operation's expression parameters and the legacy ones they exclude, in the order
/// DynamoDB lists them in its messages.
struct ExpressionParameters {
    expressions: &'static [&'static str],
    legacy: &'static [&'static str],
}

fn expression_parameters(operation: &str) -> Option<ExpressionParameters> {
    let (expressions, legacy): (&'static [&'static str], &'static [&'static str]) = match operation {
        "GetItem" | "BatchGetItem" => (&["ProjectionExpression"], &["AttributesToGet"]),
        "PutItem" | "DeleteItem" => (&["ConditionExpression"], &["Expected"]),
        "UpdateItem" => (
            &["UpdateExpression", "ConditionExpression"],
            &["AttributeUpdates", "Expected"],
        ),
        "Query" => (
            &["ProjectionExpression", "FilterExpression", "KeyConditionExpression"],
            &["AttributesToGet", "QueryFilter", "ConditionalOperator", "KeyConditions"],
        ),
        "Scan" => (
            &["ProjectionExpression", "FilterExpression"],
            &["AttributesToGet", "ScanFilter", "ConditionalOperator"],
        ),
        _ => return None,
    };
    Some(ExpressionParameters { expressions, legacy })
}

/// DynamoDB's first check of an operation's own (after types and constraints): expression and
/// legacy parameters mixed, or expression names or values given with no expression to use
/// them. `request` is the operation's request (a BatchGetItem table's entry).
fn expression_parameter_problem(parameters: &ExpressionParameters, request: &Map<String, Value>) -> Option<ApiError> {
    let given = |name: &str| request.get(name).is_some_and(|v| !v.is_null());
    let expressions: Vec<(&str, bool)> = parameters.expressions.iter().map(|n| (*n, given(n))).collect();
    let any_expression = expressions.iter().any(|(_, set)| *set);
    if any_expression {
        // KeyConditions go with a filter or projection expression, just not with
        // KeyConditionExpression.
        let legacy: Vec<(&str, bool)> = parameters
            .legacy
            .iter()
            .map(|n| {
                (
                    *n,
                    given(n) && (*n != "KeyConditions" || given("KeyConditionExpression")),
                )
            })
            .collect();
        if let Err(refusal) = super::refuse_mixed(&expressions, &legacy) {
            return Some(refusal);
        }
    }
    if given("ExpressionAttributeNames") && !any_expression {
        return Some(ApiError::validation(
            "ExpressionAttributeNames can only be specified when using expressions",
        ));
    }
    let value_expressions: Vec<&str> = parameters
        .expressions
        .iter()
        .copied()
        .filter(|n| *n != "ProjectionExpression")
        .collect();
    if !value_expressions.is_empty()
        && given("ExpressionAttributeValues")
        && !value_expressions.iter().any(|n| given(n))
    {
        let verb = if value_expressions.len() > 1 { "are" } else { "is" };
        return Some(ApiError::validation(format!(
            "ExpressionAttributeValues can only be specified when using expressions: {} {verb} null",
            value_expressions.join(" and ")
        )));
    }
    None
}

/// The attribute value decoder's refusal of `value`, in DynamoDB's words, if it refuses it.
fn value_problem(value: &Value) -> Option<String> {
    let error = serde_json::from_value::<dynamo_protocol::AttributeValue>(value.clone()).err()?;
    let message = error.to_string();
    message
        .strip_prefix(dynamo_protocol::value::VALIDATION_MARKER)
        .map(str::to_string)
}

/// After an operation refused a request as invalid (a `ValidationException`): what DynamoDB
/// would have named before it, if anything. Its decoder judges every attribute value as it
/// reads the request, while DynamoDB judges them later, in its own order: expression and
/// legacy parameters mixed (or names and values without an expression) come first, and a
/// Query's or Scan's ExclusiveStartKey value is "The provided starting key is invalid: ...".
/// Only a refused request pays for this.
pub fn earlier_refusal(operation: &str, body: &[u8], refusal: &ApiError) -> Option<ApiError> {
    if body.len() > JUDGED_BODY_BYTES_MAX {
        return None;
    }
    let parameters = expression_parameters(operation)?;
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    if operation == "BatchGetItem" {
        let tables = request.get("RequestItems").and_then(Value::as_object)?;
        return tables
            .values()
            .filter_map(Value::as_object)
            .find_map(|entry| expression_parameter_problem(&parameters, entry));
    }
    if let Some(problem) = expression_parameter_problem(&parameters, &request) {
        return Some(problem);
    }
    if matches!(operation, "Query" | "Scan") {
        // The filter's values are judged before the starting key's.
        let filter = if operation == "Query" {
            "QueryFilter"
        } else {
            "ScanFilter"
        };
        let filter_values = request
            .get(filter)
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|conditions| conditions.values())
            .filter_map(|condition| condition.get("AttributeValueList").and_then(Value::as_array))
            .flatten();
        if let Some(problem) = filter_values.filter_map(value_problem).next() {
            return (problem != refusal.message).then(|| ApiError::validation(problem));
        }
        // Then the filter's conditions (operators, their arguments, ConditionalOperator) and
        // AttributesToGet, as the operation judges them.
        let earlier = |error: ApiError| (error.message != refusal.message).then_some(error);
        if let Some(Ok(conditions)) = request.get(filter).filter(|v| !v.is_null()).map(|v| {
            serde_json::from_value::<std::collections::HashMap<String, crate::expr::legacy::LegacyCondition>>(v.clone())
        }) {
            let operator = request.get("ConditionalOperator").and_then(Value::as_str);
            if let Err(error) = crate::expr::legacy::filter_to_condition(&conditions, operator) {
                return earlier(error);
            }
        }
        if let Some(Ok(names)) = request
            .get("AttributesToGet")
            .filter(|v| !v.is_null())
            .map(|v| serde_json::from_value::<Vec<String>>(v.clone()))
            && let Err(error) = crate::expr::legacy::attributes_to_get_to_projection(&names)
        {
            return earlier(error);
        }
    }
    if matches!(operation, "Query" | "Scan")
        && let Some(start) = request.get("ExclusiveStartKey").and_then(Value::as_object)
    {
        for value in start.values() {
            if let Some(problem) = value_problem(value) {
                let problem = problem.as_str();
                // DynamoDB names the starting key for a value's form, not for its numbers or
                // duplicates.
                let about_numbers = [
                    "contains duplicates",
                    "number set",
                    "numeric value",
                    "significant digits",
                    "number with magnitude",
                ]
                .iter()
                .any(|words| problem.contains(words));
                if about_numbers {
                    return (problem != refusal.message).then(|| ApiError::validation(problem));
                }
                return Some(ApiError::validation(format!(
                    "The provided starting key is invalid: {problem}"
                )));
            }
        }
    }
    None
}

/// DynamoDB's "N validation errors detected: a; b" of `errors` (at least one).
fn constraint_error(errors: &[String]) -> ApiError {
    let count = errors.len();
    let plural = if count == 1 { "" } else { "s" };
    ApiError::validation(format!(
        "{count} validation error{plural} detected: {}",
        errors.join("; ")
    ))
}

/// Where a value sits: a structure's member, or an element of a list or map. DynamoDB's
/// deserializer words a structure given a scalar differently in the two places.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    Field,
    Element,
}

fn scalar_name(value: &Value) -> &'static str {
    match value {
        Value::Bool(true) => "TRUE_VALUE",
        Value::Bool(false) => "FALSE_VALUE",
        Value::Number(n) if n.is_f64() => "DECIMAL_VALUE",
        Value::Number(_) => "NUMBER_VALUE",
        _ => "STRING_VALUE",
    }
}

/// Step 1: the first member whose JSON type its shape cannot read, in DynamoDB's words;
/// members read leniently are rewritten in place (and `rewritten` set).
fn read_types(value: &mut Value, shape: &Shape, place: Place, rewritten: &mut bool) -> Result<(), String> {
    if value.is_null() {
        return Ok(());
    }
    match shape {
        Shape::Str(_) => match value {
            Value::String(_) => Ok(()),
            Value::Array(_) => Err("Unrecognized collection type class java.lang.String".into()),
            Value::Object(_) => Err(OBJECT_NOT_EXPECTED.into()),
            other => Err(format!("{} cannot be converted to String", scalar_name(other))),
        },
        Shape::Bool => match value {
            Value::Bool(_) => Ok(()),
            Value::String(text) => {
                let read = match text.to_ascii_uppercase().as_str() {
                    "TRUE" | "1" | "YES" => true,
                    "FALSE" | "0" | "NO" => false,
                    _ => return Err("Unexpected token received from parser".into()),
                };
                *value = Value::Bool(read);
                *rewritten = true;
                Ok(())
            }
            Value::Number(_) => Err(format!("{} cannot be converted to Boolean", scalar_name(value))),
            Value::Array(_) => Err("Unrecognized collection type class java.lang.Boolean".into()),
            _ => Err(OBJECT_NOT_EXPECTED.into()),
        },
        Shape::Int { java, .. } => match value {
            Value::Number(number) => {
                // A fraction is truncated; a number too big for an integer is left to the
                // decoder, which refuses it.
                let truncated = number.as_f64().unwrap_or_default().trunc();
                if number.is_f64() && truncated.abs() < INTEGER_READ_MAX {
                    *value = Value::from(truncated as i64);
                    *rewritten = true;
                }
                Ok(())
            }
            Value::Array(_) => Err(format!("Unrecognized collection type class java.lang.{java}")),
            Value::Object(_) => Err(OBJECT_NOT_EXPECTED.into()),
            other => Err(format!("{} cannot be converted to {java}", scalar_name(other))),
        },
        Shape::Blob => match value {
            Value::String(text) => check_base64(text),
            Value::Array(_) => Err("Unrecognized collection type class java.nio.ByteBuffer".into()),
            Value::Object(_) => Err(OBJECT_NOT_EXPECTED.into()),
            _ => Err("only base-64-encoded strings are convertible to bytes".into()),
        },
        Shape::List { member, nested, .. } => match value {
            Value::Array(elements) => {
                for element in elements {
                    read_types(element, member, Place::Element, rewritten)?;
                }
                Ok(())
            }
            Value::Object(_) => Err(OBJECT_NOT_EXPECTED.into()),
            _ if *nested => Err(NESTED_CONTAINER_GIVEN_SCALAR.into()),
            _ => Err("Unexpected field type".into()),
        },
        Shape::Map {
            value: value_shape,
            java_value,
            nested,
            ..
        } => match value {
            Value::Object(entries) => {
                for entry in entries.values_mut() {
                    read_types(entry, value_shape, Place::Element, rewritten)?;
                }
                Ok(())
            }
            Value::Array(_) => Err(format!(
                "Unrecognized collection type java.util.Map<java.lang.String, {java_value}>"
            )),
            _ if *nested => Err(NESTED_CONTAINER_GIVEN_SCALAR.into()),
            _ => Err("Unexpected field type".into()),
        },
        Shape::Struct { java, members } => read_struct(value, java, members, place, rewritten),
        Shape::AttributeValue => read_struct(value, "AttributeValue", ATTRIBUTE_VALUE_MEMBERS, place, rewritten),
    }
}

fn read_struct(
    value: &mut Value,
    java: &str,
    members: &[Member],
    place: Place,
    rewritten: &mut bool,
) -> Result<(), String> {
    match value {
        Value::Object(fields) => {
            for member in members {
                if let Some(field) = fields.get_mut(member.name) {
                    read_types(field, member.shape, Place::Field, rewritten)?;
                }
            }
            Ok(())
        }
        Value::Array(_) => Err(format!("Unrecognized collection type class {MODEL_PACKAGE}.{java}")),
        _ if place == Place::Element => Err("Unexpected value type in payload".into()),
        _ => Err("Unexpected field type".into()),
    }
}

const BINARY: Shape = Shape::Blob;
const ATTRIBUTE_VALUE_MEMBERS: &[Member] = &[
    member("S", &STRING),
    member("N", &STRING),
    member("B", &BINARY),
    member("SS", &list(&STRING)),
    member("NS", &list(&STRING)),
    member("BS", &list(&BINARY)),
    member("M", &ATTRIBUTE_MAP),
    member("L", &ATTRIBUTE_VALUE_LIST),
    member("NULL", &BOOLEAN),
    member("BOOL", &BOOLEAN),
];

/// A binary value's base64 as DynamoDB's decoder judges it: a multiple of 4 long, and its
/// last character before the padding carrying no bits past the data.
fn check_base64(text: &str) -> Result<(), String> {
    let length = text.chars().count();
    if !length.is_multiple_of(4) {
        return Err(format!(
            "Base64 encoded length is expected a multiple of 4 bytes but found: {length}"
        ));
    }
    let bytes = text.as_bytes();
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if padding == 0 || padding > 2 || padding == bytes.len() {
        return Ok(());
    }
    let last = bytes[bytes.len() - padding - 1];
    let Some(bits) = base64_value(last) else {
        // Not base64 at all: left to the value decoder's own message.
        return Ok(());
    };
    // One '=' leaves 2 spare bits in the last character, two leave 4: they must be zero.
    let spare_mask = if padding == 1 { 0b11 } else { 0b1111 };
    if bits & spare_mask != 0 {
        return Err("Invalid last non-pad Base64 character dectected".into());
    }
    Ok(())
}

fn base64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Longest rendering of a list of scalars in a constraint's message; a longer one is `[...]`.
const SHOWN_LIST_CHARS_MAX: usize = 1024;

/// How a value is shown in a constraint's message: a scalar as itself, a list of scalars as
/// `[a, b]`, an empty list or map as `[]` or `{}`, and any other structure, map or list as
/// `{...}` or `[...]` (DynamoDB prints its Java rendering, which can be as big as the request).
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(elements) if elements.is_empty() => "[]".to_string(),
        Value::Array(elements) => {
            if elements.iter().any(|e| e.is_array() || e.is_object()) {
                return "[...]".to_string();
            }
            let listed = format!("[{}]", elements.iter().map(shown).collect::<Vec<_>>().join(", "));
            if listed.len() > SHOWN_LIST_CHARS_MAX {
                "[...]".to_string()
            } else {
                listed
            }
        }
        Value::Object(fields) if fields.is_empty() => "{}".to_string(),
        Value::Object(_) => "{...}".to_string(),
        other => other.to_string(),
    }
}

fn violation(errors: &mut Vec<String>, value: Option<&Value>, at: &At, rule: &str) {
    if errors.len() >= CONSTRAINT_ERRORS_MAX {
        return;
    }
    let value = match value {
        None => "null".to_string(),
        Some(value) => format!("'{}'", shown(value)),
    };
    errors.push(format!(
        "Value {value} at '{}' failed to satisfy constraint: {rule}",
        at.render()
    ));
}

/// Where a member sits, as DynamoDB names it in a message; rendered only for a message, so a
/// valid request builds no path.
enum At<'a> {
    Root,
    /// A structure's member, named in camel case.
    Member(&'a At<'a>, &'static str),
    /// A list's element: its 1-based index, then `member`.
    Element(&'a At<'a>, usize),
    /// A map's entry: its key, then `member`.
    Entry(&'a At<'a>, &'a str),
}

impl At<'_> {
    fn render(&self) -> String {
        let join = |parent: String, name: &str| {
            if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}.{name}")
            }
        };
        match self {
            At::Root => String::new(),
            At::Member(parent, name) => join(parent.render(), &lower_first(name)),
            At::Element(parent, index) => join(parent.render(), &format!("{}.member", index + 1)),
            At::Entry(parent, key) => join(parent.render(), &format!("{key}.member")),
        }
    }
}

/// "Map keys must satisfy constraint: [...]" with every rule of `rules`.
fn map_key_rule(rules: &StrRules) -> String {
    let mut listed = Vec::new();
    if let Some(max) = rules.max {
        listed.push(format!("Member must have length less than or equal to {max}"));
    }
    if let Some(min) = rules.min {
        listed.push(format!("Member must have length greater than or equal to {min}"));
    }
    if rules.name_pattern {
        listed.push("Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+".to_string());
    }
    format!("Map keys must satisfy constraint: [{}]", listed.join(", "))
}

/// The rules of `rules` that `text` breaks, as DynamoDB words them.
fn string_problems(rules: &StrRules, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let length = text.chars().count();
    if let Some(min) = rules.min
        && length < min
    {
        problems.push(format!("Member must have length greater than or equal to {min}"));
    }
    if let Some(max) = rules.max
        && length > max
    {
        problems.push(format!("Member must have length less than or equal to {max}"));
    }
    if rules.name_pattern
        && (text.is_empty()
            || !text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        problems.push("Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+".to_string());
    }
    if !rules.one_of.is_empty() && !rules.one_of.contains(&text) {
        problems.push(format!(
            "Member must satisfy enum value set: [{}]",
            rules.one_of.join(", ")
        ));
    }
    problems
}

/// Step 2: every constraint `value` (the member at `path`) breaks, appended to `errors`.
fn check_constraints(value: &Value, shape: &Shape, at: &At, errors: &mut Vec<String>) {
    match (shape, value) {
        (Shape::Str(rules), Value::String(text)) => {
            for problem in string_problems(rules, text) {
                violation(errors, Some(value), at, &problem);
            }
        }
        (Shape::Int { min, max, .. }, Value::Number(number)) => {
            let Some(n) = number.as_i64() else { return };
            if let Some(min) = min
                && n < *min
            {
                violation(
                    errors,
                    Some(value),
                    at,
                    &format!("Member must have value greater than or equal to {min}"),
                );
            }
            if let Some(max) = max
                && n > *max
            {
                violation(
                    errors,
                    Some(value),
                    at,
                    &format!("Member must have value less than or equal to {max}"),
                );
            }
        }
        (Shape::List { member, min, max, .. }, Value::Array(elements)) => {
            check_length(value, elements.len(), *min, *max, at, errors);
            for (index, element) in elements.iter().enumerate() {
                if !element.is_null() {
                    check_constraints(element, member, &At::Element(at, index), errors);
                }
            }
        }
        (
            Shape::Map {
                value: value_shape,
                min,
                keys,
                value_len,
                ..
            },
            Value::Object(entries),
        ) => {
            check_length(value, entries.len(), *min, None, at, errors);
            if let Some(rules) = keys {
                for key in entries.keys() {
                    if !string_problems(rules, key).is_empty() {
                        // DynamoDB lists every rule on the keys, broken or not.
                        violation(errors, Some(value), at, &map_key_rule(rules));
                    }
                }
            }
            if let Some((low, high)) = value_len {
                for entry in entries.values() {
                    let length = match entry {
                        Value::Array(elements) => elements.len(),
                        Value::Object(fields) => fields.len(),
                        _ => continue,
                    };
                    if length < *low || length > *high {
                        let rule = format!(
                            "Map value must satisfy constraint: [Member must have length less than or equal to {high}, Member must have length greater than or equal to {low}]"
                        );
                        violation(errors, Some(value), at, &rule);
                    }
                }
            }
            for (key, entry) in entries {
                if !entry.is_null() {
                    check_constraints(entry, value_shape, &At::Entry(at, key), errors);
                }
            }
        }
        (Shape::Struct { members, .. }, Value::Object(fields)) => check_members(fields, members, at, errors),
        _ => {}
    }
}

fn check_members(fields: &Map<String, Value>, members: &[Member], at: &At, errors: &mut Vec<String>) {
    for member in members {
        let here = At::Member(at, member.name);
        match fields.get(member.name).filter(|v| !v.is_null()) {
            None if member.not_null => violation(errors, None, &here, "Member must not be null"),
            None => {}
            Some(field) => check_constraints(field, member.shape, &here, errors),
        }
    }
}

fn check_length(
    value: &Value,
    length: usize,
    min: Option<usize>,
    max: Option<usize>,
    at: &At,
    errors: &mut Vec<String>,
) {
    if let Some(min) = min
        && length < min
    {
        violation(
            errors,
            Some(value),
            at,
            &format!("Member must have length greater than or equal to {min}"),
        );
    }
    if let Some(max) = max
        && length > max
    {
        violation(
            errors,
            Some(value),
            at,
            &format!("Member must have length less than or equal to {max}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(shape: &Shape, body: &str) -> Result<String, (String, String)> {
        judge(shape, body.as_bytes())
            .map(|body| String::from_utf8(body.into_owned()).expect("UTF-8"))
            .map_err(|e| (e.kind.name().to_string(), e.message))
    }

    #[test]
    fn every_violated_constraint_is_named_at_once() {
        let (kind, message) = answer(
            &PUT_ITEM,
            r#"{"TableName": "abc;", "ReturnConsumedCapacity": "hi", "ReturnItemCollectionMetrics": "hi", "ReturnValues": "hi"}"#,
        )
        .expect_err("refused");
        assert_eq!(kind, "ValidationException");
        assert!(message.starts_with("5 validation errors detected: "), "{message}");
        for part in [
            "Value 'abc;' at 'tableName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
            "Value null at 'item' failed to satisfy constraint: Member must not be null",
            "Value 'hi' at 'returnValues' failed to satisfy constraint: Member must satisfy enum value set: [ALL_NEW, UPDATED_OLD, ALL_OLD, NONE, UPDATED_NEW]",
            "Value 'hi' at 'returnConsumedCapacity' failed to satisfy constraint: Member must satisfy enum value set: [INDEXES, TOTAL, NONE]",
            "Value 'hi' at 'returnItemCollectionMetrics' failed to satisfy constraint: Member must satisfy enum value set: [SIZE, NONE]",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
    }

    #[test]
    fn nested_members_are_named_by_their_path_and_the_count_stops_at_ten() {
        let (_, message) = answer(
            &CREATE_TABLE,
            r#"{"TableName": "abc", "AttributeDefinitions": [{}], "KeySchema": [{"KeyType": "X"}, {}, {}],
                "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0}}"#,
        )
        .expect_err("refused");
        assert!(
            message.contains("Value null at 'attributeDefinitions.1.member.attributeName'"),
            "{message}"
        );
        assert!(message.contains("Value 'X' at 'keySchema.1.member.keyType' failed to satisfy constraint: Member must satisfy enum value set: [HASH, RANGE]"), "{message}");
        assert!(
            message.contains(
                "at 'keySchema' failed to satisfy constraint: Member must have length less than or equal to 2"
            ),
            "{message}"
        );
        assert!(message.contains("Value '0' at 'provisionedThroughput.readCapacityUnits' failed to satisfy constraint: Member must have value greater than or equal to 1"), "{message}");
        assert!(message.starts_with("10 validation errors detected: "), "{message}");
        assert_eq!(
            message.matches("failed to satisfy constraint").count(),
            CONSTRAINT_ERRORS_MAX
        );
    }

    #[test]
    fn a_wrong_json_type_is_named_in_dynamodbs_words_before_any_constraint() {
        for (shape, body, expected) in [
            (
                &GET_ITEM,
                r#"{"TableName": true}"#,
                "TRUE_VALUE cannot be converted to String",
            ),
            (
                &GET_ITEM,
                r#"{"TableName": 23}"#,
                "NUMBER_VALUE cannot be converted to String",
            ),
            (
                &GET_ITEM,
                r#"{"TableName": 3.5}"#,
                "DECIMAL_VALUE cannot be converted to String",
            ),
            (
                &GET_ITEM,
                r#"{"TableName": []}"#,
                "Unrecognized collection type class java.lang.String",
            ),
            (&GET_ITEM, r#"{"TableName": {}}"#, OBJECT_NOT_EXPECTED),
            (
                &GET_ITEM,
                r#"{"ConsistentRead": "maybe"}"#,
                "Unexpected token received from parser",
            ),
            (
                &GET_ITEM,
                r#"{"ConsistentRead": 2}"#,
                "NUMBER_VALUE cannot be converted to Boolean",
            ),
            (&GET_ITEM, r#"{"Key": "23"}"#, "Unexpected field type"),
            (
                &GET_ITEM,
                r#"{"Key": []}"#,
                "Unrecognized collection type java.util.Map<java.lang.String, com.amazonaws.dynamodb.v20120810.AttributeValue>",
            ),
            (&GET_ITEM, r#"{"Key": {"a": "23"}}"#, "Unexpected value type in payload"),
            (
                &GET_ITEM,
                r#"{"Key": {"a": []}}"#,
                "Unrecognized collection type class com.amazonaws.dynamodb.v20120810.AttributeValue",
            ),
            (
                &GET_ITEM,
                r#"{"Key": {"a": {"S": false}}}"#,
                "FALSE_VALUE cannot be converted to String",
            ),
            (
                &GET_ITEM,
                r#"{"Key": {"a": {"L": [{"BS": [true]}]}}}"#,
                "only base-64-encoded strings are convertible to bytes",
            ),
            (
                &GET_ITEM,
                r#"{"Key": {"a": {"B": "23456"}}}"#,
                "Base64 encoded length is expected a multiple of 4 bytes but found: 5",
            ),
            (
                &GET_ITEM,
                r#"{"Key": {"a": {"B": "+/+="}}}"#,
                "Invalid last non-pad Base64 character dectected",
            ),
            (
                &PUT_ITEM,
                r#"{"Expected": {"a": {"Value": "x"}}}"#,
                "Unexpected field type",
            ),
            (
                &QUERY,
                r#"{"Limit": "23"}"#,
                "STRING_VALUE cannot be converted to Integer",
            ),
            (
                &CREATE_TABLE,
                r#"{"ProvisionedThroughput": {"ReadCapacityUnits": false}}"#,
                "FALSE_VALUE cannot be converted to Long",
            ),
            (
                &BATCH_GET_ITEM,
                r#"{"RequestItems": {"abc": {"Keys": ["x"]}}}"#,
                NESTED_CONTAINER_GIVEN_SCALAR,
            ),
            (
                &BATCH_WRITE_ITEM,
                r#"{"RequestItems": {"abc": 1}}"#,
                NESTED_CONTAINER_GIVEN_SCALAR,
            ),
        ] {
            assert_eq!(
                answer(shape, body),
                Err(("SerializationException".to_string(), expected.to_string())),
                "{body}"
            );
        }
    }

    #[test]
    fn lenient_reads_are_rewritten_and_a_valid_request_passes_untouched() {
        let body = r#"{"TableName": "abc", "Key": {"a": {"S": "x"}}, "ConsistentRead": "yes"}"#;
        let rewritten: Value = serde_json::from_str(&answer(&GET_ITEM, body).expect("accepted")).expect("accepted");
        assert_eq!(rewritten["ConsistentRead"], Value::Bool(true));
        let body = r#"{"TableName": "abc", "Limit": 2.9, "KeyConditionExpression": "a = :a"}"#;
        let rewritten: Value = serde_json::from_str(&answer(&QUERY, body).expect("accepted")).expect("accepted");
        assert_eq!(rewritten["Limit"], Value::from(2));
        let body = r#"{"TableName": "abc", "Key": {"a": {"S": "x"}}, "ConsistentRead": true, "Unknown": 1}"#;
        assert_eq!(answer(&GET_ITEM, body).expect("accepted"), body);
        assert_eq!(judge(&GET_ITEM, b"not json").expect("accepted").as_ref(), b"not json");
        assert!(check(&GET_ITEM, b"not json").is_ok());
        // Text after the value: left to the decoder (a SerializationException), whatever the
        // value breaks.
        assert!(check(&GET_ITEM, br#"{"TableName": "ab"} garbage"#).is_ok());
        assert!(check(&GET_ITEM, br#"{"TableName": "ab"}"#).is_err());
    }

    #[test]
    fn a_stream_specifications_boolean_is_read_leniently_and_its_view_type_checked() {
        let body =
            r#"{"TableName": "abc", "StreamSpecification": {"StreamEnabled": "true", "StreamViewType": "KEYS_ONLY"}}"#;
        let rewritten: Value = serde_json::from_str(&answer(&UPDATE_TABLE, body).expect("accepted")).expect("JSON");
        assert_eq!(rewritten["StreamSpecification"]["StreamEnabled"], Value::Bool(true));
        let (kind, message) = answer(
            &CREATE_TABLE,
            r#"{"TableName": "abc", "AttributeDefinitions": [], "KeySchema": [{}], "StreamSpecification": {"StreamEnabled": 1}}"#,
        )
        .expect_err("refused");
        assert_eq!(
            (kind.as_str(), message.as_str()),
            ("SerializationException", "NUMBER_VALUE cannot be converted to Boolean")
        );
        let (kind, message) = answer(
            &UPDATE_TABLE,
            r#"{"TableName": "abc", "StreamSpecification": {"StreamViewType": "BAD"}}"#,
        )
        .expect_err("refused");
        assert_eq!(kind, "ValidationException");
        assert!(
            message.starts_with("2 validation errors detected: ")
                && message.contains("Value null at 'streamSpecification.streamEnabled' failed to satisfy constraint: Member must not be null")
                && message.contains("Value 'BAD' at 'streamSpecification.streamViewType' failed to satisfy constraint: Member must satisfy enum value set: [NEW_IMAGE, OLD_IMAGE, NEW_AND_OLD_IMAGES, KEYS_ONLY]"),
            "{message}"
        );
    }

    /// The fast path (`check`, reading only what constraints need) and the whole request's
    /// judgement answer the same, for requests with and without a broken constraint.
    #[test]
    fn the_fast_path_answers_as_the_whole_judgement_does() {
        for (shape, body) in [
            (
                &PUT_ITEM,
                r#"{"TableName": "abc;", "ReturnValues": "hi", "Item": {"a": {"S": "x"}, "b": {"L": [{"N": "1"}]}}}"#,
            ),
            (
                &PUT_ITEM,
                r#"{"TableName": "abc", "Item": {"a": {"S": "x"}}, "Expected": {"a": {"ComparisonOperator": "NOPE"}}}"#,
            ),
            (&PUT_ITEM, r#"{"TableName": "abc", "Item": null}"#),
            (&PUT_ITEM, r#"{"TableName": "ab", "Item": {"a": {"S": true}}}"#),
            (
                &GET_ITEM,
                r#"{"TableName": "abc", "Key": {"a": {"S": "x"}}, "AttributesToGet": []}"#,
            ),
            (
                &QUERY,
                r#"{"TableName": "abc", "KeyConditions": {"a": {"AttributeValueList": [{"S": "x"}]}}, "Limit": 0}"#,
            ),
            (
                &BATCH_WRITE_ITEM,
                r#"{"RequestItems": {"abc": [{"PutRequest": {}}, {"DeleteRequest": {"Key": {"a": {"S": "x"}}}}]}}"#,
            ),
            (
                &BATCH_GET_ITEM,
                r#"{"RequestItems": {"a": {"Keys": [{"a": {"S": "x"}}], "AttributesToGet": ["x", "y"]}}}"#,
            ),
            (
                &CREATE_TABLE,
                r#"{"TableName": "abc", "AttributeDefinitions": [{"AttributeName": "a", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "a", "KeyType": "HASH"}], "BillingMode": "PAY_PER_REQUEST",
                "GlobalSecondaryIndexes": [{"IndexName": "g", "KeySchema": [], "Projection": {"ProjectionType": "ALL"}}]}"#,
            ),
            (&GET_ITEM, r#"{"TableName": "abc", "Key": {"a": {"S": "x"}}}"#),
            (&GET_ITEM, r#"[1, 2, 3]"#),
            (&GET_ITEM, r#"{"TableName": "abc", "Key": [{"a": {"S": "x"}}]}"#),
            (&QUERY, r#"{"TableName": "abc", "KeyConditions": [], "Limit": 0}"#),
        ] {
            let whole = judge(shape, body.as_bytes()).map(|_| ());
            match check(shape, body.as_bytes()) {
                Err(fast) => assert_eq!(Err(fast), whole, "{body}"),
                // A wrong type in a request that breaks no constraint is the decoder's to
                // refuse, and `reread` words it.
                Ok(()) => assert!(
                    whole.is_ok()
                        || whole
                            .as_ref()
                            .is_err_and(|e| e.kind == dynamo_protocol::ErrorKind::Serialization),
                    "{body}: {whole:?}"
                ),
            }
        }
        assert!(check(&PUT_ITEM, br#"{"TableName": "abc;", "Item": {"a": {"S": "x"}}}"#).is_err());
    }

    #[test]
    fn the_table_operations_judge_the_table_name_first_in_their_own_words() {
        for (body, expected) in [
            (
                r#"{"BillingMode": "X"}"#,
                "The parameter 'TableName' is required but was not present in the request",
            ),
            (
                r#"{"TableName": null}"#,
                "The parameter 'TableName' is required but was not present in the request",
            ),
            (
                r#"{"TableName": "a;", "BillingMode": "X"}"#,
                "TableName must be at least 3 characters long and at most 255 characters long",
            ),
        ] {
            assert_eq!(
                answer(&CREATE_TABLE, body),
                Err(("ValidationException".into(), expected.into())),
                "{body}"
            );
            assert_eq!(
                check(&CREATE_TABLE, body.as_bytes()).map_err(|e| e.message),
                Err(expected.to_string())
            );
        }
        let (_, message) = answer(&TABLE_ONLY, r#"{"TableName": "abc;"}"#).expect_err("refused");
        assert_eq!(
            message,
            "1 validation error detected: Value 'abc;' at 'tableName' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+"
        );
        // A wrong type still comes first.
        assert_eq!(
            answer(&TABLE_ONLY, r#"{"TableName": 5}"#),
            Err((
                "SerializationException".into(),
                "NUMBER_VALUE cannot be converted to String".into()
            ))
        );
    }

    #[test]
    fn expression_parameters_and_a_starting_key_come_before_an_attribute_value_refused_on_decoding() {
        let decoded = ApiError::validation(
            "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes",
        );
        let earlier =
            |operation: &str, body: &str| earlier_refusal(operation, body.as_bytes(), &decoded).map(|e| e.message);
        assert_eq!(
            earlier("UpdateItem", r#"{"TableName": "abc", "Key": {"a": {}}, "AttributeUpdates": {}, "Expected": {}, "UpdateExpression": "", "ConditionExpression": ""}"#).as_deref(),
            Some("Can not use both expression and non-expression parameters in the same request: Non-expression parameters: {AttributeUpdates, Expected} Expression parameters: {UpdateExpression, ConditionExpression}")
        );
        assert_eq!(
            earlier(
                "PutItem",
                r#"{"TableName": "abc", "Item": {"a": {}}, "ExpressionAttributeNames": {}}"#
            )
            .as_deref(),
            Some("ExpressionAttributeNames can only be specified when using expressions")
        );
        assert_eq!(
            earlier(
                "Query",
                r#"{"TableName": "abc", "ExpressionAttributeValues": {":a": {}}, "ProjectionExpression": "a"}"#
            )
            .as_deref(),
            Some(
                "ExpressionAttributeValues can only be specified when using expressions: FilterExpression and KeyConditionExpression are null"
            )
        );
        // KeyConditions go with a FilterExpression.
        assert_eq!(
            earlier("Query", r#"{"TableName": "abc", "KeyConditions": {}, "FilterExpression": "a = :a", "ExclusiveStartKey": {"a": {"S": "x", "N": "1"}}}"#).as_deref(),
            Some("The provided starting key is invalid: Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes")
        );
        assert_eq!(earlier("GetItem", r#"{"TableName": "abc", "Key": {"a": {}}}"#), None);
        // A filter's condition, and AttributesToGet, are judged before the starting key.
        assert_eq!(
            earlier("Scan", r#"{"TableName": "abc", "ExclusiveStartKey": {"a": {}}, "ScanFilter": {"b": {"ComparisonOperator": "LT", "AttributeValueList": [{"BOOL": true}]}}}"#).as_deref(),
            Some("One or more parameter values were invalid: ComparisonOperator LT is not valid for BOOL AttributeValue type")
        );
        assert_eq!(
            earlier(
                "Query",
                r#"{"TableName": "abc", "ExclusiveStartKey": {"a": {}}, "AttributesToGet": ["a", "a"]}"#
            )
            .as_deref(),
            Some("One or more parameter values were invalid: Duplicate value in attribute name: a")
        );
        // A filter's bad value is named before the starting key's.
        assert_eq!(
            earlier("Scan", r#"{"TableName": "abc", "ExclusiveStartKey": {"a": {}}, "ScanFilter": {"b": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "x", "N": "1"}]}}}"#).as_deref(),
            Some("Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes")
        );
        assert_eq!(
            earlier("BatchGetItem", r#"{"RequestItems": {"abc": {"Keys": [{"a": {}}], "AttributesToGet": ["a"], "ProjectionExpression": "a"}}}"#).as_deref(),
            Some("Can not use both expression and non-expression parameters in the same request: Non-expression parameters: {AttributesToGet} Expression parameters: {ProjectionExpression}")
        );
    }

    #[test]
    fn a_long_list_or_map_is_counted_past_the_read_bound_and_still_judged() {
        // 3,000 writes for one table, 2,000 tables: the lengths and every key still judged.
        let writes: Vec<String> = (0..3_000)
            .map(|_| r#"{"PutRequest": {"Item": {}}}"#.to_string())
            .collect();
        let body = format!(r#"{{"RequestItems": {{"abc": [{}]}}}}"#, writes.join(", "));
        let message = check(&BATCH_WRITE_ITEM, body.as_bytes())
            .expect_err("too many writes")
            .message;
        assert!(
            message.contains("Map value must satisfy constraint: [Member must have length less than or equal to 25"),
            "{message}"
        );
        let tables: Vec<String> = (0..2_000)
            .map(|i| format!(r#""t{i:04}": [{{"PutRequest": {{"Item": {{}}}}}}]"#))
            .collect();
        let mut body = format!(r#"{{"RequestItems": {{{}}}}}"#, tables.join(", "));
        assert!(check(&BATCH_WRITE_ITEM, body.as_bytes()).is_ok());
        body = body.replace(r#""t1999""#, r#""t;""#);
        let message = check(&BATCH_WRITE_ITEM, body.as_bytes())
            .expect_err("a bad name past the bound")
            .message;
        assert!(message.contains("Map keys must satisfy constraint"), "{message}");
    }

    #[test]
    fn a_body_past_the_judged_bound_is_answered_with_its_constraints_only() {
        // A wrong type and a broken constraint in a body over JUDGED_BODY_BYTES_MAX: the
        // constraint is named (the whole judgement would name the type first).
        let padding = "x".repeat(JUDGED_BODY_BYTES_MAX);
        let body = format!(r#"{{"TableName": "ab", "Key": {{"a": {{"S": "{padding}"}}}}, "ConsistentRead": 5}}"#);
        let message = check(&GET_ITEM, body.as_bytes()).expect_err("refused").message;
        assert!(
            message.contains("Member must have length greater than or equal to 3"),
            "{message}"
        );
        assert!(matches!(reread(&GET_ITEM, body.as_bytes()), Reread::Unchanged));
        assert!(earlier_refusal("GetItem", body.as_bytes(), &ApiError::validation("x")).is_none());
    }

    #[test]
    fn batch_maps_check_their_keys_and_value_lengths() {
        let (_, message) =
            answer(&BATCH_WRITE_ITEM, r#"{"RequestItems": {"a;": [], "abc": [{}]}}"#).expect_err("refused");
        assert!(message.starts_with("2 validation errors detected: "), "{message}");
        assert!(message.contains("at 'requestItems' failed to satisfy constraint: Map keys must satisfy constraint: [Member must have length less than or equal to 255, Member must have length greater than or equal to 3, Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+]"), "{message}");
        assert!(message.contains("Map value must satisfy constraint: [Member must have length less than or equal to 25, Member must have length greater than or equal to 1]"), "{message}");
    }

    #[test]
    fn base64_spare_bits() {
        assert!(check_base64("").is_ok());
        assert!(check_base64("YQ==").is_ok());
        assert!(check_base64("YR==").is_err());
        assert!(check_base64("YWE=").is_ok());
        assert!(check_base64("YWF=").is_err());
        assert!(check_base64("=+/=").is_err());
        assert!(check_base64("+/+=").is_err());
        assert!(check_base64("+/+/").is_ok());
    }

    /// Any JSON, in any member of any operation's shape: nothing panics, the fast path refuses
    /// exactly what the whole judgement refuses (or leaves a wrong type to the decoder), and
    /// the error path's reordering is total.
    mod properties {
        use proptest::prelude::*;
        use serde_json::{Map, Value, json};

        use super::super::*;

        const OPERATIONS: &[&str] = &[
            "GetItem",
            "PutItem",
            "DeleteItem",
            "UpdateItem",
            "Query",
            "Scan",
            "BatchGetItem",
            "BatchWriteItem",
            "CreateTable",
            "UpdateTable",
            "DescribeTable",
            "ListTables",
            "TagResource",
            "UntagResource",
            "ListTagsOfResource",
        ];
        const MEMBERS: &[&str] = &[
            "TableName",
            "Key",
            "Item",
            "ReturnValues",
            "ReturnConsumedCapacity",
            "Limit",
            "ConsistentRead",
            "ExclusiveStartKey",
            "Expected",
            "KeyConditions",
            "ScanFilter",
            "QueryFilter",
            "AttributesToGet",
            "RequestItems",
            "KeySchema",
            "AttributeDefinitions",
            "ProvisionedThroughput",
            "GlobalSecondaryIndexes",
            "GlobalSecondaryIndexUpdates",
            "IndexName",
            "Segment",
            "TotalSegments",
            "ExpressionAttributeNames",
            "ExpressionAttributeValues",
            "ProjectionExpression",
            "ConditionExpression",
            "Tags",
            "TagKeys",
        ];

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-1.0e20f64..1.0e20).prop_map(Value::from),
                "[a-zA-Z0-9;=+/ ]{0,8}".prop_map(Value::String),
                prop_oneof![
                    Just("S"),
                    Just("N"),
                    Just("B"),
                    Just("SS"),
                    Just("BS"),
                    Just("NULL"),
                    Just("HASH"),
                    Just("EQ")
                ]
                .prop_map(|s| Value::String(s.to_string())),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::vec(
                        (
                            prop_oneof![
                                Just("S".to_string()),
                                Just("N".to_string()),
                                Just("BS".to_string()),
                                Just("AttributeName".to_string()),
                                Just("KeyType".to_string()),
                                Just("Keys".to_string()),
                                Just("PutRequest".to_string()),
                                Just("ComparisonOperator".to_string()),
                                Just("AttributeValueList".to_string()),
                                "[a-z]{1,4}"
                            ],
                            inner
                        ),
                        0..5,
                    )
                    .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<String, Value>>())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
            #[test]
            fn the_fast_path_and_the_whole_judgement_agree_on_any_request(
                operation in prop::sample::select(OPERATIONS),
                members in prop::collection::vec((prop::sample::select(MEMBERS), json_value()), 0..6),
            ) {
                let shape = input(operation).expect("a covered operation");
                let mut request = Map::new();
                for (name, value) in members {
                    request.insert(name.to_string(), value);
                }
                let body = serde_json::to_vec(&json!(request)).expect("serialises");
                let whole = judge(shape, &body).map(|_| ());
                match check(shape, &body) {
                    Err(fast) => prop_assert_eq!(Err(fast), whole),
                    Ok(()) => prop_assert!(
                        whole.is_ok() || whole.as_ref().is_err_and(|e| e.kind == dynamo_protocol::ErrorKind::Serialization),
                        "{:?}", whole
                    ),
                }
                if let Reread::Rewritten(rewritten) = reread(shape, &body) {
                    // A rewritten body reads without another rewrite.
                    prop_assert!(!matches!(reread(shape, &rewritten), Reread::Rewritten(_)));
                }
                let _ = earlier_refusal(operation, &body, &ApiError::validation("x"));
            }
        }
    }
}
