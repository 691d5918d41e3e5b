// Drives the store's PartiQL with the AWS SDK for JavaScript v3 (@aws-sdk/client-dynamodb):
// ExecuteStatement (INSERT, SELECT with a parameter and a nested projection, UPDATE ... RETURNING,
// an INSERT of an existing key), BatchExecuteStatement and ExecuteTransaction. Prints one JSON
// object for the Python test (tests/integration/test_partiql.py) to check.
// Usage: node partiql.mjs ENDPOINT_URL TABLE_NAME
import {
  DynamoDBClient,
  CreateTableCommand,
  ExecuteStatementCommand,
  BatchExecuteStatementCommand,
  ExecuteTransactionCommand,
} from "@aws-sdk/client-dynamodb";

const [endpoint, table] = process.argv.slice(2);
const dynamodb = new DynamoDBClient({
  endpoint,
  region: "us-east-1",
  credentials: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY" },
  maxAttempts: 1,
});
const run = (Statement, extra = {}) => dynamodb.send(new ExecuteStatementCommand({ Statement, ...extra }));

await dynamodb.send(
  new CreateTableCommand({
    TableName: table,
    BillingMode: "PAY_PER_REQUEST",
    KeySchema: [{ AttributeName: "pk", KeyType: "HASH" }],
    AttributeDefinitions: [{ AttributeName: "pk", AttributeType: "S" }],
  }),
);
await run(`INSERT INTO "${table}" VALUE {'pk': ?, 'm': {'l': [1, 2, 3]}, 'n': 1}`, {
  Parameters: [{ S: "a" }],
});
const selected = (await run(`SELECT m.l[2], n FROM "${table}" WHERE pk = ?`, { Parameters: [{ S: "a" }] })).Items;
const updated = (await run(`UPDATE "${table}" SET n = n + 1 WHERE pk = 'a' RETURNING MODIFIED NEW *`)).Items;
let duplicate = null;
try {
  await run(`INSERT INTO "${table}" VALUE {'pk': 'a'}`);
} catch (error) {
  duplicate = { name: error.name, message: error.message };
}
const batch = (
  await dynamodb.send(
    new BatchExecuteStatementCommand({
      Statements: [
        { Statement: `INSERT INTO "${table}" VALUE {'pk': 'b'}` },
        { Statement: `INSERT INTO "${table}" VALUE {'pk': 'a'}` },
      ],
    }),
  )
).Responses;
await dynamodb.send(
  new ExecuteTransactionCommand({
    TransactStatements: [
      { Statement: `DELETE FROM "${table}" WHERE pk = 'b'` },
      { Statement: `UPDATE "${table}" SET t = true WHERE pk = 'a'` },
    ],
  }),
);
const after = (
  await dynamodb.send(
    new ExecuteTransactionCommand({
      TransactStatements: [
        { Statement: `SELECT t FROM "${table}" WHERE pk = 'a'` },
        { Statement: `SELECT * FROM "${table}" WHERE pk = 'b'` },
      ],
    }),
  )
).Responses;
console.log(JSON.stringify({ selected, updated, duplicate, batch, after }));
