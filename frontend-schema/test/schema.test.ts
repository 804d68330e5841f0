/**
 * The Apollo set-up agrees with schema.graphql (no Taskwire server needed): the cache's
 * `possibleTypes` are the schema's interface implementations, and every object type the
 * cache normalises has the key fields its policy names.
 */
import { readFileSync } from "node:fs";
import { test } from "node:test";
import assert from "node:assert/strict";

import { GraphQLObjectType, buildSchema, isInterfaceType } from "graphql";

import { possibleTypes, typePolicies } from "../src/index.js";

// Compiled to dist/test/, so the package root is two levels up.
const sdl = readFileSync(new URL("../../schema.graphql", import.meta.url), "utf8");
const schema = buildSchema(sdl);

test("possibleTypes lists every interface's implementations", () => {
  const fromSchema: Record<string, string[]> = {};
  for (const type of Object.values(schema.getTypeMap())) {
    if (isInterfaceType(type) && !type.name.startsWith("__")) {
      fromSchema[type.name] = schema.getPossibleTypes(type).map((t) => t.name).sort();
    }
  }
  const inCache = Object.fromEntries(Object.entries(possibleTypes).map(([k, v]) => [k, [...v].sort()]));
  assert.deepEqual(inCache, fromSchema);
});

test("every key field of the type policies exists, and every keyed type has an id", () => {
  for (const [name, policy] of Object.entries(typePolicies)) {
    const type = schema.getType(name);
    assert.ok(type instanceof GraphQLObjectType, `${name} is an object type of the schema`);
    const keyFields = policy.keyFields;
    if (Array.isArray(keyFields)) {
      for (const field of keyFields) {
        assert.ok(typeof field === "string" && field in type.getFields(), `${name}.${String(field)} exists`);
      }
      assert.ok("id" in type.getFields(), `${name} has an id`);
    }
  }
});
