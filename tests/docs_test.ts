/**
 * Commands in the docs that no other test runs, checked against the code they drive:
 * docs/scaling.md's path from a laptop to a cluster and back (hardening item 30).
 *
 * @module
 */
import { TRAIN_DEFAULTS } from "../lib/train/trainer.ts";
import { assert, assertEquals } from "./_assert.ts";

const scaling = await Deno.readTextFile(new URL("../docs/scaling.md", import.meta.url));

Deno.test("docs/scaling.md: the cluster step keeps the laptop's batch, and the edge step reads the folder the cluster wrote", async () => {
  const cluster = scaling.match(
    /torchrun --nnodes (\d+) --nproc_per_node (\d+) [^`]*-m sigmarec_torch\.train [^`]*--out (\S+) --batch-size (\d+)/,
  );
  assert(cluster, "step 2's torchrun command is not where it was");
  const [, nodes, perNode, out, perProcess] = cluster;
  // --batch-size is per process: the processes together make one laptop step.
  assertEquals(Number(nodes) * Number(perNode) * Number(perProcess), TRAIN_DEFAULTS.batchSize);
  // torchrun runs from interop/torch (step 2), the edge commands from the repository's root.
  assert(/from `interop\/torch`/.test(scaling), "step 2 no longer says where torchrun runs");
  const edge = [...scaling.matchAll(/deno task (?:serve|recommend) --model ([^\s`]+)/g)].map((m) =>
    m[1]
  );
  assert(edge.length >= 2, "step 3's commands are not where they were");
  for (const model of edge) assertEquals(model, `interop/torch/${out}`);
  // The twin's own default is per process too: the doc's warning holds.
  const train = await Deno.readTextFile(
    new URL("../interop/torch/sigmarec_torch/train.py", import.meta.url),
  );
  assert(
    /"--batch-size", type=int, default=\d+, help="sequences per step per process"/.test(train),
  );
});

const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));

/** The command lines of the README's `sh` blocks, continuation lines joined. */
function shellCommands(markdown: string): string[] {
  const blocks = [...markdown.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]);
  return blocks.flatMap((b) => b.replace(/\\\n\s*/g, " ").split("\n")).map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
}

Deno.test("README, run as written: bare deno is explained before its first use, and servers listen on the loopback only (hardening items 17, 18)", () => {
  const commands = shellCommands(readme);
  const firstBare = readme.indexOf(commands.find((c) => /^(\S+=\S+ )*deno /.test(c))!);
  const explained = readme.indexOf("alias deno='npx -y deno@");
  assert(explained >= 0 && explained < firstBare, "the alias line must come before bare deno");
  const servers = commands.filter((c) => /deno serve |http\.server/.test(c));
  assert(servers.length >= 2, "the deno serve and http.server examples are not where they were");
  for (const c of servers) {
    assert(/--host 127\.0\.0\.1|-b 127\.0\.0\.1/.test(c), `listens on every interface: ${c}`);
  }
});

Deno.test("README: the links form comes before deno add, the in-process latency stands beside the HTTP one, and every deno serve variable is named (hardening items 19-21)", async () => {
  const links = readme.indexOf('"links"');
  const add = readme.indexOf("deno add jsr:");
  assert(links >= 0 && (add < 0 || links < add), "the links form must come first");
  const latency = readme.match(/[^\n]*ranks one history in[\s\S]*?\n\n/)?.[0] ?? "";
  assert(/in process/.test(latency) && /bench:serve/.test(latency), `latency: ${latency}`);
  const serve = await Deno.readTextFile(new URL("../cli/deno_serve.ts", import.meta.url));
  const variables = [...serve.matchAll(/Deno\.env\.get\("([A-Z_]+)"\)/g)].map((m) => m[1]);
  assert(variables.length >= 3, `deno_serve.ts reads ${variables}`);
  for (const v of variables) assert(readme.includes(`\`${v}\``), `${v} is not in the README`);
});
