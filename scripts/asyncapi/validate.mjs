// Validate the AsyncAPI document with the AsyncAPI project's own parser.
// Usage: node scripts/asyncapi/validate.mjs [docs/asyncapi.yaml]
// Prints one line per problem and exits 1 on any error (warnings are printed, not fatal).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Parser, fromFile } from '@asyncapi/parser';

const path = resolve(process.argv[2] ?? 'docs/asyncapi.yaml');
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse({
  source: pathToFileURL(path).href,
});
const severities = ['error', 'warning', 'info', 'hint'];
let errors = 0;
for (const d of diagnostics) {
  const level = severities[d.severity] ?? String(d.severity);
  if (d.severity === 0) errors += 1;
  if (d.severity <= 1) console.log(`${level}: ${d.path.join('.') || '(document)'}: ${d.message}`);
}
if (errors || !document) {
  console.log(`${path}: ${errors} error(s): not a valid AsyncAPI document`);
  process.exit(1);
}
const version = JSON.parse(readFileSync(new URL('./node_modules/@asyncapi/parser/package.json', import.meta.url))).version;
console.log(`${path}: valid AsyncAPI ${document.version()} (@asyncapi/parser ${version}): ` +
  `${document.channels().length} channels, ${document.operations().length} operations, ` +
  `${document.components().messages().length} messages`);
