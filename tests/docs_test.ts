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
