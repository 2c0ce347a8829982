// Parses each AsyncAPI document given with @asyncapi/parser (file references resolved relative to
// it) and reports it valid only when the parser returns a document and no error diagnostic.
"use strict";
const path = require("node:path");
const { Parser, fromFile } = require(path.join(process.env.ASYNCAPI_MODULES, "@asyncapi/parser"));

const SEVERITY = ["error", "warning", "info", "hint"];

async function check(parser, file) {
  const { document, diagnostics } = await fromFile(parser, file).parse();
  const errors = diagnostics.filter((d) => d.severity === 0);
  const valid = document !== undefined && errors.length === 0;
  console.log(`${valid ? "valid" : "invalid"}: ${file}`);
  for (const d of diagnostics) {
    console.log(`  ${SEVERITY[d.severity] ?? d.severity} ${d.code} at /${d.path.join("/")}: ${d.message}`);
  }
  return valid;
}

(async () => {
  const parser = new Parser();
  let ok = true;
  for (const file of process.argv.slice(2)) {
    ok = (await check(parser, path.resolve(file))) && ok;
  }
  process.exit(ok ? 0 : 1);
})().catch((err) => {
  console.error(err);
  process.exit(2);
});
