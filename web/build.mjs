// Builds the browser assets the binary embeds (api/assets/), byte-for-byte reproducibly
// from package-lock.json: `npm ci && npm run build` (CI checks `git diff --exit-code`).
import { build } from "esbuild";
import { rmSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const out = (app) => `${root}api/assets/${app}`;

const common = {
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  // React and friends pick their production builds from this.
  define: { "process.env.NODE_ENV": '"production"' },
  // Third-party licence notices stay with the code, at the end of each file.
  legalComments: "eof",
  // Fonts and images that GraphiQL's CSS carries are already data: URLs.
  loader: { ".woff2": "dataurl", ".png": "dataurl", ".svg": "dataurl" },
  // Absolute paths would make the output depend on where the clone lives.
  absWorkingDir: root,
  charset: "utf8",
  logLevel: "warning",
};

const apps = [
  { app: "graphiql", entry: "web/src/graphiql/main.jsx", jsx: { jsx: "automatic" } },
  { app: "console", entry: "web/src/console/main.jsx", jsx: { jsx: "automatic", jsxImportSource: "preact" } },
];

for (const { app, entry, jsx } of apps) {
  rmSync(out(app), { recursive: true, force: true });
  await build({ ...common, ...jsx, entryPoints: { [app]: entry }, outdir: out(app) });
}
