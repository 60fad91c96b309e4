// Peer for bench/bench_queue.py: graphile-worker doing no-op jobs.
//
// usage: node graphile_bench.js DATABASE_URL N CONCURRENCY
//
// Installs graphile-worker's schema into the (fresh) database, adds N no-op
// jobs in one statement (graphile_worker.add_jobs, not timed), then runs a
// worker with the given concurrency and times from run() until the N-th job
// completed. Prints one JSON object on stdout.
"use strict";

const { run, runMigrations, Logger } = require("graphile-worker");
const { Pool } = require("pg");

const silent = new Logger(() => () => {});

async function main() {
  const [url, nArg, concurrencyArg] = process.argv.slice(2);
  const n = Number(nArg);
  const concurrency = Number(concurrencyArg);
  if (!url || !n || !concurrency) {
    throw new Error("usage: node graphile_bench.js DATABASE_URL N CONCURRENCY");
  }

  await runMigrations({ connectionString: url, logger: silent });

  const admin = new Pool({ connectionString: url, max: 1 });
  await admin.query(
    `select graphile_worker.add_jobs(array(
       select row('noop', '{}'::json, null, null, null, null, null, null)::graphile_worker.job_spec
       from generate_series(1, $1::int)))`,
    [n],
  );

  let completed = 0;
  let failed = 0;
  let resolveDone;
  const done = new Promise((resolve) => {
    resolveDone = resolve;
  });

  const started = process.hrtime.bigint();
  const runner = await run({
    connectionString: url,
    concurrency,
    // one connection per concurrent job, like ours (16 connections)
    maxPoolSize: concurrency,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: silent,
    taskList: { noop: async () => {} },
  });
  runner.events.on("job:success", () => {
    completed += 1;
    if (completed + failed >= n) resolveDone();
  });
  runner.events.on("job:error", () => {
    failed += 1;
    if (completed + failed >= n) resolveDone();
  });
  await done;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await runner.stop();

  // completed jobs are deleted: an empty queue means every job ran
  const left = await admin.query("select count(*)::int as n from graphile_worker.jobs");
  await admin.end();

  process.stdout.write(
    JSON.stringify({
      system: "graphile-worker",
      version: require("graphile-worker/package.json").version,
      n,
      concurrency,
      completed,
      failed,
      jobs_left: left.rows[0].n,
      seconds,
      per_s: n / seconds,
    }) + "\n",
  );
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});
