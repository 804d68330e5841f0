/** A JSON value: what the schema's `JSON` scalar carries (task payloads and results). */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
