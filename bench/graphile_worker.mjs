// A graphile-worker process for `python -m bench peers`: node graphile_worker.mjs URL CONCURRENCY LOCAL_QUEUE
// Its batched preset: a local queue fetching LOCAL_QUEUE jobs at a time, completions batched.
// Prints "ready" once running; stops on SIGTERM.
import { run } from "graphile-worker";

const [url, concurrency, localQueue] = process.argv.slice(2);
const runner = await run({
  connectionString: url,
  concurrency: Number(concurrency),
  noHandleSignals: true,
  pollInterval: 1000,
  taskList: { noop: async () => {} },
  preset: {
    worker: {
      localQueue: { size: Number(localQueue) },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  },
});
console.log("ready");
process.on("SIGTERM", () => {
  runner.stop().then(() => process.exit(0), () => process.exit(1));
});
await runner.promise;
