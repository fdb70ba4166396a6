"""The official `openai` client against a live `metrum serve` (issue 15): structured outputs,
tools, and refused fields, checked by independent code (the `jsonschema` package, Pydantic).

Run by scripts/openai-client.sh, which starts the server and sets METRUM_URL. Every test talks
HTTP through the real client, so what passes here is what an application sees.
"""

import json
import os
import re
import unittest

import jsonschema
import openai
from pydantic import BaseModel, Field

URL = os.environ["METRUM_URL"]
client = openai.OpenAI(base_url=f"{URL}/v1", api_key="unused", max_retries=0, timeout=120)
MODEL = client.models.list().data[0].id

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {"type": "array", "items": {"type": "string", "enum": ["en", "fr", "de"]},
                      "maxItems": 3},
        "married": {"type": "boolean"},
    },
    "required": ["name", "age", "languages", "married"],
    "additionalProperties": False,
}


def chat(content, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)


class StructuredOutputs(unittest.TestCase):
    def test_json_schema_outputs_validate_over_seeds_at_temperature(self):
        for seed in range(6):
            r = chat("Describe a person as JSON.", temperature=0.9, seed=seed, max_tokens=120,
                     response_format={"type": "json_schema",
                                      "json_schema": {"name": "person", "schema": PERSON,
                                                      "strict": True}})
            choice = r.choices[0]
            self.assertEqual(choice.finish_reason, "stop", choice.message.content)
            jsonschema.validate(json.loads(choice.message.content), PERSON)

    def test_streamed_json_schema_output_validates(self):
        stream = chat("Describe a person as JSON.", temperature=0.7, seed=11, max_tokens=120,
                      stream=True,
                      response_format={"type": "json_schema",
                                       "json_schema": {"name": "person", "schema": PERSON}})
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        jsonschema.validate(json.loads(text), PERSON)

    def test_parse_with_a_pydantic_model(self):
        # Bounded, so a 135M model cannot ramble into `max_tokens` (parse() raises on that).
        class Step(BaseModel):
            explanation: str = Field(max_length=40)
            output: int

        class Answer(BaseModel):
            steps: list[Step] = Field(max_length=3)
            final: int

        r = client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "What is 2 + 3? Show steps."}],
            response_format=Answer, temperature=0.5, seed=1, max_tokens=300)
        parsed = r.choices[0].message.parsed
        self.assertIsInstance(parsed, Answer)
        self.assertIsInstance(parsed.final, int)

    def test_json_object_on_both_endpoints(self):
        # Free-form JSON has no length bound, and a 135M model left to describe something in
        # JSON rambles into max_tokens; a prompt it copies keeps the check about the grammar.
        r = chat('Return {"ok": true} as JSON.', temperature=0.3, seed=3, max_tokens=200,
                 response_format={"type": "json_object"})
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertIsInstance(json.loads(r.choices[0].message.content), dict)
        c = client.completions.create(model=MODEL, prompt="A JSON object describing a cat:",
                                      max_tokens=200, temperature=0.3, seed=4,
                                      extra_body={"response_format": {"type": "json_object"}})
        self.assertEqual(c.choices[0].finish_reason, "stop")
        self.assertIsInstance(json.loads(c.choices[0].text), dict)

    def test_regex_and_choice(self):
        for seed in range(3):
            r = chat("Give a phone number.", temperature=1.0, seed=seed, max_tokens=20,
                     extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}})
            self.assertRegex(r.choices[0].message.content, r"^\d{3}-\d{4}$")
            r = chat("Is Paris in France?", temperature=1.0, seed=seed, max_tokens=5,
                     extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}})
            self.assertIn(r.choices[0].message.content, ["yes", "no", "maybe"])
            self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_n_choices_each_follow_the_grammar(self):
        r = chat("Count.", temperature=1.0, seed=5, max_tokens=10, n=4,
                 extra_body={"structured_outputs": {"regex": "[0-9]{2,4}"}})
        self.assertEqual(len(r.choices), 4)
        for choice in r.choices:
            self.assertRegex(choice.message.content, r"^[0-9]{2,4}$")

    def test_lark_grammar(self):
        grammar = 'start: "(" num ("+" num)* ")"\nnum: /[0-9]/'
        r = chat("An expression:", temperature=1.0, seed=2, max_tokens=30,
                 extra_body={"structured_outputs": {"grammar": grammar}})
        self.assertRegex(r.choices[0].message.content, r"^\([0-9](\+[0-9])*\)$")


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 20},
                                      "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 12}},
                       "required": ["tz"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def check_calls(test, calls, names=None):
    test.assertTrue(calls, "no tool calls")
    for call in calls:
        test.assertTrue(call.id.startswith("call_"), call.id)
        test.assertEqual(call.type, "function")
        test.assertIn(call.function.name, names or SCHEMAS)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


class Tools(unittest.TestCase):
    def test_required_calls_are_valid_over_seeds(self):
        for seed in range(3):
            r = chat("What is the weather in Paris?", tools=TOOLS, tool_choice="required",
                     parallel_tool_calls=False, temperature=0.8, seed=seed, max_tokens=150)
            choice = r.choices[0]
            self.assertEqual(choice.finish_reason, "tool_calls", choice.message)
            self.assertEqual(len(choice.message.tool_calls), 1)
            check_calls(self, choice.message.tool_calls)

    def test_named_choice_calls_that_function(self):
        r = chat("Hello!", tools=TOOLS, temperature=0.8, seed=4, max_tokens=150,
                 tool_choice={"type": "function", "function": {"name": "get_time"}})
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        # A named choice is exactly one call, even with parallel_tool_calls left on.
        self.assertEqual(len(choice.message.tool_calls), 1)
        check_calls(self, choice.message.tool_calls, names=["get_time"])

    def test_none_never_calls_and_auto_is_well_formed(self):
        r = chat("What is the weather in Paris?", tools=TOOLS, tool_choice="none",
                 temperature=0, max_tokens=40)
        self.assertIsNone(r.choices[0].message.tool_calls)
        self.assertIsInstance(r.choices[0].message.content, str)
        r = chat("What is the weather in Paris?", tools=TOOLS, tool_choice="auto",
                 temperature=0, max_tokens=60)
        message = r.choices[0].message
        if message.tool_calls:
            check_calls(self, message.tool_calls)
            self.assertEqual(r.choices[0].finish_reason, "tool_calls")
        else:
            self.assertIsInstance(message.content, str)

    def test_streamed_calls_reassemble_in_the_client(self):
        with client.chat.completions.stream(
                model=MODEL, messages=[{"role": "user", "content": "Weather in Rome?"}],
                tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                temperature=0.7, seed=2, max_tokens=150) as stream:
            fragments = []
            for event in stream:
                if event.type == "tool_calls.function.arguments.delta":
                    fragments.append(event.arguments_delta)
            final = stream.get_final_completion()
        choice = final.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        # openai-python concatenates repeated strings: a name sent twice would read
        # "get_weatherget_weather" here.
        check_calls(self, choice.message.tool_calls, names=["get_weather"])
        # The arguments arrived as the model wrote them, in many fragments, and the client's
        # accumulator put them back together.
        fragments = [f for f in fragments if f]
        self.assertGreater(len(fragments), 1, fragments)
        self.assertEqual("".join(fragments), choice.message.tool_calls[0].function.arguments)

    def test_history_with_tool_results(self):
        messages = [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather",
                              "arguments": json.dumps({"city": "Paris", "unit": "c"})}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees, sunny"},
        ]
        r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS,
                                           temperature=0, max_tokens=30)
        self.assertEqual(r.choices[0].finish_reason in ("stop", "length", "tool_calls"), True)
        bad = [dict(m) for m in messages]
        bad[1] = {**bad[1], "tool_calls": [{**bad[1]["tool_calls"][0],
                                            "function": {"name": "get_weather",
                                                         "arguments": "not json"}}]}
        with self.assertRaises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=bad, tools=TOOLS, max_tokens=5)
        self.assertEqual(caught.exception.body.get("param"),
                         "messages[1].tool_calls[0].function.arguments")


class Refusals(unittest.TestCase):
    def assert_400(self, param, **kwargs):
        with self.assertRaises(openai.BadRequestError) as caught:
            chat("hi", max_tokens=5, **kwargs)
        error = caught.exception.body
        self.assertEqual(error.get("param"), param, error)
        return error

    def test_invalid_and_unsupported_schemas_are_400_with_the_reason(self):
        error = self.assert_400(
            "response_format.json_schema.schema",
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"type": "strin"}}})
        self.assertIn("strin", error["message"])
        self.assert_400("structured_outputs.regex",
                        extra_body={"structured_outputs": {"regex": "(unclosed"}})
        self.assert_400(
            "response_format.json_schema.schema",
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "string", "format": "not-a-format"}}})

    def test_huge_schemas_and_two_constraints_are_400(self):
        huge = {"type": "object",
                "properties": {f"p{i}": {"type": "string"} for i in range(4000)}}
        error = self.assert_400("response_format.json_schema.schema",
                                response_format={"type": "json_schema",
                                                 "json_schema": {"name": "x", "schema": huge}})
        self.assertEqual(error.get("code"), "constraint_too_large")
        self.assert_400("structured_outputs.regex",
                        response_format={"type": "json_object"},
                        extra_body={"structured_outputs": {"regex": "a"}})

    def test_unimplemented_and_unknown_fields_are_named(self):
        self.assert_400("audio", extra_body={"audio": {"voice": "x", "format": "mp3"}})
        self.assert_400("guided_json", extra_body={"guided_json": {"type": "object"}})
        self.assert_400("temprature", extra_body={"temprature": 0.5})
        self.assert_400("messages[0].cache_control",
                        extra_body={"messages": [{"role": "user", "content": "x",
                                                  "cache_control": {}}]})


if __name__ == "__main__":
    unittest.main(verbosity=2)
