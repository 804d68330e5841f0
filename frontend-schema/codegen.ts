// Turns schema.graphql and operations/*.graphql into typed documents (src/generated/).
// `npm run codegen` regenerates them; CI fails when the checked-in output differs.
import type { CodegenConfig } from "@graphql-codegen/cli";

const config: CodegenConfig = {
  schema: "schema.graphql",
  documents: ["operations/*.graphql"],
  ignoreNoDocuments: false,
  generates: {
    "src/generated/": {
      preset: "client",
      presetConfig: {
        // Plain result types: Apollo Client reads fragments from its cache itself, and
        // consumers use `ListTasksQuery["tasks"]["edges"][number]["node"]` and the like.
        fragmentMasking: false,
      },
      config: {
        // Every custom scalar must be mapped, so a new one in the schema fails codegen
        // instead of silently becoming `any`.
        strictScalars: true,
        scalars: {
          // RFC 3339 text; parse with `new Date(value)` where a Date is needed.
          DateTime: "string",
          JSON: {
            input: "../json.js#JsonValue",
            output: "../json.js#JsonValue",
          },
        },
        useTypeImports: true,
        enumsAsTypes: true,
        // Imports with `.js`: the package is ESM and type-checked with NodeNext.
        emitLegacyCommonJSImports: false,
      },
    },
  },
};

export default config;
