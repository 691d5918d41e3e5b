// Drives the store's DynamoDB Streams with the AWS SDK for JavaScript v3: creates a table with a
// NEW_AND_OLD_IMAGES stream, writes to it, and reads the stream back through every operation of
// @aws-sdk/client-dynamodb-streams. Prints one JSON object for the Python test to check.
// Usage: node streams.mjs ENDPOINT_URL TABLE_NAME
import {
  DynamoDBClient,
  CreateTableCommand,
  PutItemCommand,
  UpdateItemCommand,
  DeleteItemCommand,
  DescribeTableCommand,
} from "@aws-sdk/client-dynamodb";
import {
  DynamoDBStreamsClient,
  ListStreamsCommand,
  DescribeStreamCommand,
  GetShardIteratorCommand,
  GetRecordsCommand,
} from "@aws-sdk/client-dynamodb-streams";

const [endpoint, table] = process.argv.slice(2);
const config = {
  endpoint,
  region: "us-east-1",
  credentials: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY" },
  maxAttempts: 1,
};
const dynamodb = new DynamoDBClient(config);
const streams = new DynamoDBStreamsClient(config);

await dynamodb.send(
  new CreateTableCommand({
    TableName: table,
    BillingMode: "PAY_PER_REQUEST",
    KeySchema: [{ AttributeName: "pk", KeyType: "HASH" }],
    AttributeDefinitions: [{ AttributeName: "pk", AttributeType: "S" }],
    StreamSpecification: { StreamEnabled: true, StreamViewType: "NEW_AND_OLD_IMAGES" },
  }),
);
const arn = (await dynamodb.send(new DescribeTableCommand({ TableName: table }))).Table.LatestStreamArn;
await dynamodb.send(new PutItemCommand({ TableName: table, Item: { pk: { S: "a" }, n: { N: "1" } } }));
await dynamodb.send(
  new UpdateItemCommand({
    TableName: table,
    Key: { pk: { S: "a" } },
    UpdateExpression: "SET n = :n",
    ExpressionAttributeValues: { ":n": { N: "2" } },
  }),
);
await dynamodb.send(new DeleteItemCommand({ TableName: table, Key: { pk: { S: "a" } } }));

const listed = (await streams.send(new ListStreamsCommand({ TableName: table }))).Streams;
const description = (await streams.send(new DescribeStreamCommand({ StreamArn: arn }))).StreamDescription;
const shardId = description.Shards[0].ShardId;
const iterator = async (type, sequence) =>
  (
    await streams.send(
      new GetShardIteratorCommand({
        StreamArn: arn,
        ShardId: shardId,
        ShardIteratorType: type,
        ...(sequence ? { SequenceNumber: sequence } : {}),
      }),
    )
  ).ShardIterator;
const all = await streams.send(new GetRecordsCommand({ ShardIterator: await iterator("TRIM_HORIZON") }));
const second = all.Records[1].dynamodb.SequenceNumber;
const at = await streams.send(new GetRecordsCommand({ ShardIterator: await iterator("AT_SEQUENCE_NUMBER", second), Limit: 1 }));
const after = await streams.send(
  new GetRecordsCommand({ ShardIterator: await iterator("AFTER_SEQUENCE_NUMBER", second), Limit: 1 }),
);
const latest = await streams.send(new GetRecordsCommand({ ShardIterator: await iterator("LATEST") }));

console.log(
  JSON.stringify({
    arn,
    listed: listed.map((s) => s.StreamArn),
    status: description.StreamStatus,
    viewType: description.StreamViewType,
    events: all.Records.map((r) => r.eventName),
    modifyOld: all.Records[1].dynamodb.OldImage,
    modifyNew: all.Records[1].dynamodb.NewImage,
    created: all.Records[0].dynamodb.ApproximateCreationDateTime instanceof Date,
    at: at.Records.map((r) => r.dynamodb.SequenceNumber),
    after: after.Records.map((r) => r.eventName),
    latest: latest.Records.length,
    latestNext: typeof latest.NextShardIterator === "string",
  }),
);
