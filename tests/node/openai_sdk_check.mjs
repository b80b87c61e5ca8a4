// The official openai Node SDK against a live server (fake model), run by tests/views/test_openai_node.py:
// plain chat, streaming, a tool call and structured output. Prints one JSON line of what it got.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "x", maxRetries: 0 });
const ask = (content) => [{ role: "user", content }];
const out = {};

const plain = await client.chat.completions.create({ model: "fake", messages: ask("Hello") });
out.plain = { content: plain.choices[0].message.content, finish: plain.choices[0].finish_reason };

let streamed = "";
for await (const chunk of await client.chat.completions.create({ model: "fake", messages: ask("Hello"), stream: true })) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
}
out.streamed = streamed;

const tools = [{ type: "function", function: { name: "get_weather",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];
const call = await client.chat.completions.create({
  model: "fake", tools, messages: ask('Weather? [[fake:call get_weather {"city": "Paris"}]]') });
out.call = { finish: call.choices[0].finish_reason, calls: call.choices[0].message.tool_calls };

const schema = { type: "object", properties: { name: { type: "string" } }, required: ["name"], additionalProperties: false };
const structured = await client.chat.completions.create({ model: "fake", messages: ask("A name"),
  response_format: { type: "json_schema", json_schema: { name: "person", schema, strict: true } } });
out.structured = JSON.parse(structured.choices[0].message.content);

console.log(JSON.stringify(out));
