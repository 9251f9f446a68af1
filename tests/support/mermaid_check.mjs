// Parses Mermaid diagrams with Mermaid's own parser, one Node process for all of them. Prints one JSON
// line per file: {"file", "type"} when Mermaid accepts it, {"file", "error"} when it does not.
// Exit 0 when every file parsed, 1 when one did not, 2 when Mermaid is not installed.
//   NODE_TOOLS=<npm --prefix dir> node tests/support/mermaid_check.mjs <file>...   (make test installs it)
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const home = process.env.NODE_TOOLS;
if (!home || process.argv.length < 3) {
  console.error('usage: NODE_TOOLS=<dir> node mermaid_check.mjs <file>...');
  process.exit(2);
}
const require = createRequire(join(home, 'package.json'));
const load = async (name) => {
  try {
    return await import(pathToFileURL(require.resolve(name)).href);
  } catch (error) {
    console.error(`cannot load ${name} from ${home}: ${error.message}`);
    process.exit(2);
  }
};

// Mermaid's bundled DOMPurify binds to `window` when it is loaded; without one, every label fails.
const { JSDOM } = await load('jsdom');
globalThis.window = new JSDOM('').window;
const mermaid = (await load('mermaid')).default;

let failed = false;
for (const file of process.argv.slice(2)) {
  try {
    const result = await mermaid.parse(readFileSync(file, 'utf8'), { suppressErrors: false });
    console.log(JSON.stringify({ file, type: result.diagramType }));
  } catch (error) {
    failed = true;
    console.log(JSON.stringify({ file, error: error?.message ?? String(error) }));
  }
}
process.exit(failed ? 1 : 0);
